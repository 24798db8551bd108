#!/bin/sh
# Runs one build command of docker/Dockerfile with the build-only inputs, which never land in a layer:
#   - extra CA certificates (BuildKit secret `ca`, e.g. a TLS-intercepting proxy's CA, or a whole bundle):
#     appended to the image's own bundle in a temporary file that pip, requests and apt trust;
#   - wheels in docker/build/wheels (bind mount at /build/wheels): pip also looks there (PIP_FIND_LINKS);
#   - TORCH_INDEX_URL (a build argument): an extra index for torch's CPU build, when set.
# usage (in a RUN with --mount=type=bind,source=docker,target=/build --mount=type=secret,id=ca):
#   /build/build-env.sh COMMAND [ARG ...]
set -eu
extra=/run/secrets/ca
bundle=
if [ -s "$extra" ]; then
  bundle=$(mktemp /tmp/build-ca.XXXXXX)
  cat /etc/ssl/certs/ca-certificates.crt "$extra" >"$bundle" 2>/dev/null || cat "$extra" >"$bundle"
  export PIP_CERT="$bundle" SSL_CERT_FILE="$bundle" REQUESTS_CA_BUNDLE="$bundle" NEXTGPT_BUILD_CA="$bundle"
fi
# Not for the CUDA variant: pip would take the local torch 2.13.0+cpu for its torch==2.13.0 pin.
if [ "${TORCH_VARIANT:-cpu}" != cuda ] && ls /build/wheels/*.whl >/dev/null 2>&1; then
  export PIP_FIND_LINKS=/build/wheels
fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL"
fi
# Caches written while installing (pip, numba, vLLM's first import) go to a throw-away HOME, not to the
# runtime user's home, where root-owned leftovers would be unwritable for uid 10001.
home=$(mktemp -d /tmp/build-home.XXXXXX)
export HOME="$home"
status=0
"$@" || status=$?
# Nothing of the build inputs stays behind: the bundle, pip's and Python's caches.
[ -z "$bundle" ] || rm -f "$bundle"
rm -rf "$home" /root/.cache /tmp/pip-* 2>/dev/null || true
exit $status
