#!/usr/bin/env bash
# `make images`: every image of docker/Dockerfile for one variant (encoder, llm, decoder, gateway, tools),
# built with BuildKit and tagged nextgpt/<target>:<variant>; on a machine with no image registry also the
# base image (scripts/build-base.sh) and Redis (docker/redis.Dockerfile).
#
# usage: scripts/images.sh [TARGET ...]           (default: tools encoder decoder gateway llm)
# env:
#   VARIANT           cpu (default) or cuda
#   PYTHON_IMAGE      the base image (default python:3.11.7-slim-bookworm, pulled when missing; where it
#                     cannot be pulled, scripts/build-base.sh's nextgpt/base:bookworm-py3.11 is built and used)
#   NEXTGPT_BUILD_CA  a PEM file of extra CA certificates that pip and apt trust during the build only (a
#                     BuildKit secret, never in a layer): a TLS-intercepting proxy's CA. Default: this host's
#                     bundle /etc/ssl/certs/ca-certificates.crt (it holds what the host trusts); empty: none
#   TORCH_INDEX_URL   index for torch's CPU build when this host's pip cannot provide the wheel
#                     (default https://download.pytorch.org/whl/cpu)
# Writes build/images/report.tsv (target, seconds, size) and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1

variant=${VARIANT:-cpu}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(tools encoder decoder gateway llm)
python_image=${PYTHON_IMAGE:-python:3.11.7-slim-bookworm}
local_base=nextgpt/base:bookworm-py3.11
ca=${NEXTGPT_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}
torch_wheel=torch==2.13.0+cpu
out=build/images
mkdir -p "$out"

step() { echo "[images] $(date +%H:%M:%S) $*"; }

# --- a Docker engine: Debian's docker.io where none is installed, dockerd started where none runs (as
# .ci/run does for redis-server). Root only; elsewhere start your own engine first.
if ! command -v docker >/dev/null 2>&1; then
  step "installing docker.io (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  step "starting dockerd (log: $out/dockerd.log)"
  nohup dockerd >"$out/dockerd.log" 2>&1 &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || {
    tail -20 "$out/dockerd.log"
    exit 1
  }
fi

# --- a BuildKit client: `docker buildx` where the plugin exists; else Debian's docker.io client (20.10),
# whose DOCKER_BUILDKIT=1 uses the BuildKit built into the daemon (a newer CLI without buildx refuses).
build=()
if docker buildx version >/dev/null 2>&1; then
  build=(docker buildx build --load)
else
  for cli in docker /usr/bin/docker; do
    if command -v "$cli" >/dev/null && DOCKER_BUILDKIT=1 "$cli" build --help 2>/dev/null | grep -q -- '--secret'; then
      build=(env DOCKER_BUILDKIT=1 "$cli" build)
      break
    fi
  done
fi
[ ${#build[@]} -gt 0 ] || {
  echo "no BuildKit client: install the docker buildx plugin (or Debian's docker.io)"
  exit 1
}
step "BuildKit client: ${build[*]}"

# --- the base image: the public one if it is here or can be pulled, else the local debootstrap build
registry=1
if ! docker image inspect "$python_image" >/dev/null 2>&1; then
  step "pulling $python_image"
  if ! timeout 120 docker pull -q "$python_image" >/dev/null 2>&1; then
    registry=0
    step "$python_image cannot be pulled (no registry): building the local base instead"
    scripts/build-base.sh "$local_base"
    python_image=$local_base
  fi
fi
step "base image: $python_image"

# --- torch's CPU wheel from this host's pip (its find-links, local indexes or PyPI mirror), when it has
# it: the build then needs no PyTorch index. Otherwise pip in the build uses TORCH_INDEX_URL.
index_args=()
if [ "$variant" = cpu ]; then
  if ls docker/build/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 ||
    timeout 600 python3 -m pip download -q --no-deps --only-binary :all: -d docker/build/wheels "$torch_wheel" >/dev/null 2>&1; then
    step "torch CPU wheel: $(ls docker/build/wheels/torch-2.13.0+cpu-*.whl)"
    index_args=(--build-arg TORCH_INDEX_URL=)
  else
    step "torch CPU wheel not on this host: pip in the build uses ${TORCH_INDEX_URL:-the CPU index of PyTorch}"
    [ -z "${TORCH_INDEX_URL:-}" ] || index_args=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
  fi
fi

secret_args=()
if [ -n "$ca" ]; then
  test -s "$ca" || {
    echo "NEXTGPT_BUILD_CA=$ca: no such file"
    exit 1
  }
  secret_args=(--secret "id=ca,src=$ca")
  step "extra CA certificates for the build: $ca (BuildKit secret, not in any layer)"
fi

build_one() { # name dockerfile tag [build args...]
  local name=$1 file=$2 tag=$3 start
  shift 3
  start=$(date +%s)
  step "building $tag"
  # the full log to a file, the step lines to the terminal; pipefail makes a failed build fail the pipeline
  if ! "${build[@]}" -f "$file" -t "$tag" "${secret_args[@]}" "$@" . 2>&1 | tee "$out/build-$name.log" |
    { grep -E '^#[0-9]+ (\[|DONE|ERROR|CACHED)|^ERROR|error:|\[install\]|vLLM' || true; }; then
    echo "[images] $tag failed: the end of $out/build-$name.log"
    tail -40 "$out/build-$name.log"
    exit 1
  fi
  local size
  size=$(docker image inspect -f '{{.Size}}' "$tag")
  printf '%s\t%s\t%s\t%d s\t%d MB\n' "$name" "$tag" "$variant" $(($(date +%s) - start)) $((size / 1000000)) >>"$out/report.tsv"
  step "$tag: $(($(date +%s) - start)) s, $((size / 1000000)) MB"
}

: >"$out/report.tsv"
if [ "$registry" = 0 ] && ! docker image inspect redis:7.4-alpine >/dev/null 2>&1; then
  build_one redis docker/redis.Dockerfile nextgpt/redis:bookworm --build-arg "BASE_IMAGE=$python_image"
fi
for target in "${targets[@]}"; do
  build_one "$target" docker/Dockerfile "nextgpt/$target:$variant" --target "$target" \
    --build-arg "VARIANT=$variant" --build-arg "PYTHON_IMAGE=$python_image" "${index_args[@]}"
done
step "done; image, tag, variant, build time, size (layers shared between images count in each):"
column -t -s $'\t' "$out/report.tsv"
