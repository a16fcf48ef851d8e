#!/bin/sh
# Entrypoint of the docker CLI stand-ins. Like the official docker image, it runs its command as
# given, except that a leading flag or docker subcommand goes to the docker CLI. When DOCKER_HOST
# is unset and no socket is mounted, it points the CLI at a daemon under the name "docker".
set -eu

if [ "$#" -gt 0 ]; then
    case "$1" in
        -*)
            set -- docker "$@"
            ;;
        *)
            # `docker help NAME` succeeds only for docker subcommands such as "version" or "ps".
            if docker help "$1" > /dev/null 2>&1; then
                set -- docker "$@"
            fi
            ;;
    esac
fi

# Client certificates appear only once a dind daemon with DOCKER_TLS_CERTDIR set has written them,
# so a client that starts earlier falls back to the plain-TCP port, as the official image does.
if [ -z "${DOCKER_HOST:-}" ] && [ ! -S /var/run/docker.sock ]; then
    client_certs=
    if [ -n "${DOCKER_TLS_CERTDIR:-}" ] \
        && [ -s "$DOCKER_TLS_CERTDIR/client/ca.pem" ] \
        && [ -s "$DOCKER_TLS_CERTDIR/client/cert.pem" ] \
        && [ -s "$DOCKER_TLS_CERTDIR/client/key.pem" ]; then
        client_certs=$DOCKER_TLS_CERTDIR/client
    fi

    if [ -n "$client_certs" ]; then
        export DOCKER_HOST=tcp://docker:2376
        export DOCKER_TLS_VERIFY=1
        export DOCKER_CERT_PATH="$client_certs"
    elif [ -n "${DOCKER_TLS_VERIFY:-}" ]; then
        export DOCKER_HOST=tcp://docker:2376
    else
        export DOCKER_HOST=tcp://docker:2375
    fi
fi

exec "$@"
