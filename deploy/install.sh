#!/bin/sh
# Install latentserve's runtime (no dev or training extras) into a fresh virtual environment,
# at the exact versions and hashes of requirements/runtime.lock.
# Used verbatim by the Dockerfile and by CI's check of the image's steps outside Docker.
#   deploy/install.sh VENV_DIR SOURCE_DIR [LOCK]    (LOCK: default requirements/runtime.lock)
# TORCH_INDEX_URL, when set, is an extra index for torch's CPU build, torch==2.13.0+cpu (the
# Dockerfile points it at PyTorch's CPU wheel index); the lock's hashes pin every file.
set -eu
venv=$1
src=$2
lock=${3:-requirements/runtime.lock}
python3 -m venv "$venv"
extra=""
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  extra="--extra-index-url $TORCH_INDEX_URL"
fi
# shellcheck disable=SC2086  # $extra is two words or none
"$venv/bin/pip" install --no-cache-dir --quiet --require-hashes -r "$src/$lock" $extra
"$venv/bin/pip" install --no-cache-dir --quiet --no-deps --no-build-isolation "$src"
"$venv/bin/python" -c "import torch, service; assert torch.__version__.startswith('2.13.0'); assert torch.version.cuda is None, 'a CUDA build of torch was installed'"
