#!/bin/sh
# The physical floor of the DinD build benchmark: the containers a docker executor needs for one
# job of bench/pipelines/dind-build, made with plain docker CLI calls and nothing else.
# Usage: floor.sh PROJECT_DIR RUN_ID [LABEL=VALUE ...]
# Everything carries the label dind-dood-harness.bench=floor and the given labels, and is removed
# on exit. The bench passes its session's labels, so a sweep after a killed run finds them.
set -eu

project=$(cd "$1" && pwd)
run_id=$2
shift 2
network="bench-floor-$run_id"
service="bench-floor-$run_id-dind"
job="bench-floor-$run_id-job"
set -- --label "dind-dood-harness.bench=floor" $(for label in "$@"; do printf -- '--label %s ' "$label"; done)

# The job container goes first, because the network cannot be removed while a container is attached.
remove() {
    docker rm -f -v "$job" "$service" >/dev/null 2>&1 || true
    docker network rm "$network" >/dev/null 2>&1 || true
}
trap remove EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

docker network create "$@" "$network" >/dev/null
docker run -d --privileged "$@" --name "$service" --network "$network" --network-alias docker \
    -e DOCKER_TLS_CERTDIR= docker:dind >/dev/null

# The job: the same three script lines as the pipeline, on a bind mount of the project.
docker run --rm "$@" --name "$job" --network "$network" -e DOCKER_HOST=tcp://docker:2375 \
    -v "$project:/builds/bench/dind-build" -w /builds/bench/dind-build docker:stable sh -c '
        until docker info >/dev/null 2>&1; do sleep 0.2; done
        docker build -t bench/hello:1 .
        docker images'
