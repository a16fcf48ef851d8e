#!/bin/sh
# Wait for the configuration the harness copies in, hash its credentials, then serve the registry.
set -eu

dir=/etc/docker/registry

# The harness issues the TLS certificate for the container's IP address, which exists only once
# the container runs, so it copies config.yml, the TLS files and the credentials in after start.
# The marker file is the last member of that copy.
tenths=0
while [ ! -f "$dir/config.complete" ]; do
    if [ "$tenths" -ge 600 ]; then
        echo "registry-entrypoint: timed out after 60 s waiting for $dir/config.complete" >&2
        exit 64
    fi
    sleep 0.1
    tenths=$((tenths + 1))
done

# distribution 2.8 accepts only bcrypt entries in htpasswd files. The password goes through
# stdin so it never appears in a process list, and the plain copy is deleted after hashing.
if [ -f "$dir/credentials" ]; then
    # read fails at a last line without newline, so its status is not checked.
    IFS=: read -r user password < "$dir/credentials" || true
    if [ -z "${user:-}" ] || [ -z "${password:-}" ]; then
        echo "registry-entrypoint: invalid $dir/credentials: expected USER:PASSWORD" >&2
        exit 64
    fi
    printf '%s\n' "$password" | htpasswd -niB "$user" > "$dir/htpasswd"
    rm -f "$dir/credentials"
fi

exec docker-registry serve "$dir/config.yml"
