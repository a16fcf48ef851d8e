#!/bin/sh
# Entrypoint of the node stand-in: as in the official node image, a first argument that is a
# flag or no command on PATH (a script name such as app.js) is handed to node.
set -eu

if [ "$#" -eq 0 ]; then
    set -- node
fi

case "$1" in
    -*)
        set -- node "$@"
        ;;
    *)
        if ! command -v "$1" > /dev/null 2>&1; then
            set -- node "$@"
        fi
        ;;
esac

exec "$@"
