#!/bin/sh
# Entrypoint of the dind stand-ins, behaving like the official docker:dind image:
# - no arguments, or only flags: run dockerd on the unix socket and on TCP, with TLS on port 2376
#   when DOCKER_TLS_CERTDIR is non-empty, else without TLS on port 2375; the flags are appended;
# - "dockerd ...": run that command line as given, under docker-init and the dind wrapper;
# - any other command: run it as is.
set -eu

log() {
    echo "dockerd-entrypoint: $*" >&2
}

# Adds one subjectAltName entry to $sans unless it is already there.
add_san() {
    case ",$sans," in
        *",$1,"*) ;;
        *) sans="$sans,$1" ;;
    esac
}

# Sets $sans to every name and address of this container, plus the DOCKER_TLS_SAN entries.
# Those are separated by commas or spaces. A bare entry becomes IP: when it looks like an address,
# else DNS:.
collect_server_sans() {
    sans="DNS:docker"
    add_san DNS:localhost
    add_san IP:127.0.0.1
    for name in $(cat /etc/hostname 2> /dev/null) $(hostname -f 2> /dev/null) $(hostname -s 2> /dev/null); do
        add_san "DNS:$name"
    done
    for address in $(hostname -I 2> /dev/null); do
        add_san "IP:$address"
    done
    for entry in $(echo "${DOCKER_TLS_SAN:-}" | tr ',' ' '); do
        case "$entry" in
            DNS:* | IP:*) ;;
            *:*) entry="IP:$entry" ;;
            *[!0-9.]*) entry="DNS:$entry" ;;
            *) entry="IP:$entry" ;;
        esac
        add_san "$entry"
    done
}

# Creates a private key unless one exists: keys survive restarts, so clients keep trusting the CA.
ensure_key() {
    if [ ! -s "$1" ]; then
        openssl genrsa -out "$1" 4096 2> /dev/null
    fi
}

# Issues certificate $4 for key $1 with common name $2 and the X.509v3 extensions $3, signed by
# the CA under $certdir/ca.
issue_cert() {
    request=$(mktemp)
    extensions=$(mktemp)
    printf '%b\n' "$3" > "$extensions"
    openssl req -new -key "$1" -subj "/CN=$2" -out "$request"
    openssl x509 -req -in "$request" -days 825 -extfile "$extensions" \
        -CA "$certdir/ca/cert.pem" -CAkey "$certdir/ca/key.pem" \
        -set_serial "0x$(openssl rand -hex 16)" -out "$4" 2> /dev/null
    rm -f "$request" "$extensions"
}

# Writes CA, server and client certificates under $certdir/{ca,server,client}. Certificates are
# issued anew on every start so the server names match this container's current addresses.
setup_tls() {
    if [ -s "$certdir/server/cert.pem" ] && [ ! -s "$certdir/ca/key.pem" ]; then
        log "no CA key in $certdir/ca, so the supplied server certificate is only verified"
        openssl verify -CAfile "$certdir/server/ca.pem" "$certdir/server/cert.pem"
        return
    fi

    mkdir -p "$certdir/ca" "$certdir/server" "$certdir/client"
    ensure_key "$certdir/ca/key.pem"
    openssl req -new -x509 -key "$certdir/ca/key.pem" -days 825 -subj "/CN=docker:dind CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$certdir/ca/cert.pem"

    collect_server_sans
    ensure_key "$certdir/server/key.pem"
    issue_cert "$certdir/server/key.pem" "docker:dind server" \
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=$sans" \
        "$certdir/server/cert.pem"
    cp "$certdir/ca/cert.pem" "$certdir/server/ca.pem"

    ensure_key "$certdir/client/key.pem"
    issue_cert "$certdir/client/key.pem" "docker:dind client" \
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth" \
        "$certdir/client/cert.pem"
    cp "$certdir/ca/cert.pem" "$certdir/client/ca.pem"
    # Client containers share this directory through a volume and may run as any user.
    chmod 0644 "$certdir/client/key.pem"
    log "TLS certificates written to $certdir (server names: $sans)"
}

# Points iptables and ip6tables at the backend that works in this network namespace:
# DOCKER_IPTABLES_LEGACY forces legacy, else nf_tables is preferred.
choose_iptables() {
    if [ -n "${DOCKER_IPTABLES_LEGACY:-}" ]; then
        backend=legacy
    elif iptables-nft -t filter -n -L > /dev/null 2>&1; then
        backend=nft
    elif iptables-legacy -t filter -n -L > /dev/null 2>&1; then
        backend=legacy
    else
        log "neither iptables-nft nor iptables-legacy works; dockerd will report the error"
        return 0
    fi
    update-alternatives --quiet --set iptables "/usr/sbin/iptables-$backend"
    update-alternatives --quiet --set ip6tables "/usr/sbin/ip6tables-$backend"
    log "iptables backend: $backend"
}

# Succeeds when the capability bounding set lacks capabilities up to the kernel's cap_last_cap.
# runc then fails on privileged containers, because they request every capability.
bounding_set_incomplete() {
    last=$(cat /proc/sys/kernel/cap_last_cap)
    full=$(( (1 << (last + 1)) - 1 ))
    bounding=$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)
    [ $(( 0x$bounding & full )) -ne "$full" ]
}

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    # A tcp:// DOCKER_HOST is usually a job variable meant for clients, so only unix:// moves
    # the socket.
    socket=unix:///var/run/docker.sock
    case "${DOCKER_HOST:-}" in
        unix://*) socket=$DOCKER_HOST ;;
    esac

    if [ -n "${DOCKER_TLS_CERTDIR:-}" ]; then
        certdir=$DOCKER_TLS_CERTDIR
        setup_tls
        set -- dockerd --host="$socket" --host=tcp://0.0.0.0:2376 --tlsverify \
            --tlscacert="$certdir/server/ca.pem" --tlscert="$certdir/server/cert.pem" \
            --tlskey="$certdir/server/key.pem" "$@"
    else
        log "DOCKER_TLS_CERTDIR is empty: listening on tcp://0.0.0.0:2375 without TLS"
        # Debian's dockerd 20.10.24 delays its start by 15 s on a TCP socket without TLS unless
        # --tls=false states the intent; the imitated images start without that delay.
        set -- dockerd --host="$socket" --host=tcp://0.0.0.0:2375 --tls=false "$@"
    fi
fi

if [ "$1" = dockerd ]; then
    # A container restarted after an unclean stop keeps pid files that stop dockerd and its
    # containerd from starting.
    find /run \( -name 'docker*.pid' -o -name 'containerd*.pid' \) -delete 2> /dev/null || true
    choose_iptables

    case " $* " in
        *" --default-runtime"* | *" --add-runtime"*) ;;
        *)
            if bounding_set_incomplete; then
                log "capability bounding set is incomplete: registering runc-capfilter as default runtime"
                set -- "$@" --add-runtime=harness-runc=/usr/local/bin/runc-capfilter \
                    --default-runtime=harness-runc
            fi
            ;;
    esac

    # docker-init (tini) reaps the shims that nested containers leave behind.
    set -- docker-init -- dind "$@"
fi

exec "$@"
