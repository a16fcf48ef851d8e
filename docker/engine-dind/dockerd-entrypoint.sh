#!/bin/sh
# Entrypoint of the versioned dind stand-ins. The official images from 20.10 on start dockerd on
# plain TCP without --tls=false, so the daemon of that version decides what happens: 20.10 to
# 26.x wait 15 s with a deprecation warning, later ones may refuse to start. The harness's own
# docker:dind passes --tls=false instead (docker/dind/dockerd-entrypoint.sh), so this wrapper
# builds the plain-TCP command line itself and hands every other case to that entrypoint.
set -eu

if { [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; } && [ -z "${DOCKER_TLS_CERTDIR:-}" ]; then
    socket=unix:///var/run/docker.sock
    case "${DOCKER_HOST:-}" in
        unix://*) socket=$DOCKER_HOST ;;
    esac
    echo "dockerd-entrypoint: DOCKER_TLS_CERTDIR is empty: listening on tcp://0.0.0.0:2375 without TLS" >&2
    set -- dockerd --host="$socket" --host=tcp://0.0.0.0:2375 "$@"
fi

exec dockerd-entrypoint-base.sh "$@"
