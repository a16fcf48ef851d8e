#!/bin/sh
# The physical floor of the DinD build benchmark: the containers a docker executor needs for one
# job of bench/pipelines/dind-build, made with plain docker CLI calls and nothing else.
# Usage: floor.sh PROJECT_DIR RUN_ID
# Everything carries the label dind-dood-harness.bench=floor and is removed on exit.
set -eu

project=$(cd "$1" && pwd)
run_id=$2
network="bench-floor-$run_id"
service="bench-floor-$run_id-dind"
label="dind-dood-harness.bench=floor"

remove() {
    docker rm -f -v "$service" >/dev/null 2>&1 || true
    docker network rm "$network" >/dev/null 2>&1 || true
}
trap remove EXIT INT TERM

docker network create --label "$label" "$network" >/dev/null
docker run -d --privileged --label "$label" --name "$service" --network "$network" --network-alias docker \
    -e DOCKER_TLS_CERTDIR= docker:dind >/dev/null

# The job: the same three script lines as the pipeline, on a bind mount of the project.
docker run --rm --label "$label" --network "$network" -e DOCKER_HOST=tcp://docker:2375 \
    -v "$project:/builds/bench/dind-build" -w /builds/bench/dind-build docker:stable sh -c '
        until docker info >/dev/null 2>&1; do sleep 0.2; done
        docker build -t bench/hello:1 .
        docker images'
