#!/usr/bin/env bash
# The one install procedure of the project: `make setup` (and so CI) and every Docker image run it.
#
# usage: scripts/install.sh VENV [REQUIREMENTS_FILE ...]
#   default files: requirements/core.txt requirements/test.txt (the images pass core.txt only)
# env:
#   PYTHON           interpreter that creates VENV when it does not exist (default python3)
#   TORCH            torch requirement, installed on the same pip line as the files (default torch==2.13.0:
#                    without the pin pip may pull a multi-GB CUDA build); images: torch==2.13.0+cpu or the
#                    CUDA build torch==2.13.0
#   TORCH_VARIANT    cpu (default) or cuda: the CUDA build brings triton, which is refused beside the CPU wheel
#   INSTALL_PROJECT  1 (default) also installs this project (editable); 0 installs the requirements only
#                    (a Docker layer that survives source edits)
# Other pip settings (PIP_EXTRA_INDEX_URL, PIP_NO_CACHE_DIR, ...) pass through as environment variables.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${1:?usage: scripts/install.sh VENV [REQUIREMENTS_FILE ...]}
shift
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  files=(requirements/core.txt requirements/test.txt)
fi
torch=${TORCH:-torch==2.13.0}
variant=${TORCH_VARIANT:-cpu}
pip=("$venv/bin/pip" install --disable-pip-version-check -q)

step() { echo "[install] $*"; }
test -x "$venv/bin/python" || { step "creating the virtual environment $venv"; "${PYTHON:-python3}" -m venv "$venv"; }
requirements=()
for f in "${files[@]}"; do
  requirements+=(-r "$f")
done
step "installing $torch and the pinned packages of ${files[*]} (first time: a few minutes; then seconds)"
"${pip[@]}" "$torch" "${requirements[@]}"
# imagebind-unofficial declares torchvision/torchaudio/pytorchvideo/decord: installed without them.
"${pip[@]}" --no-deps -r requirements/nodeps.txt
if [ "${INSTALL_PROJECT:-1}" = 1 ]; then
  step "installing this project (editable)"
  "${pip[@]}" --no-deps --no-build-isolation -e .
fi

# PyPI's torchvision/torchaudio/triton link CUDA and break transformers imports beside the CPU torch.
forbidden='torchvision|torchaudio|torchcodec'
if [ "$variant" = cpu ]; then
  forbidden="$forbidden|triton"
fi
if "$venv/bin/pip" list 2>/dev/null | grep -iE "^($forbidden) "; then
  echo "$forbidden must not be installed in $venv"
  exit 1
fi
