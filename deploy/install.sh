#!/bin/sh
# Install latentserve's runtime (no dev or training extras) into a fresh virtual environment.
# Used verbatim by the Dockerfile and by CI's check of the image's steps outside Docker.
#   deploy/install.sh VENV_DIR SOURCE_DIR
# TORCH_INDEX_URL, when set, is where the CPU build of torch comes from (the Dockerfile points
# it at PyTorch's CPU wheel index, so the CUDA build is never pulled).
set -eu
venv=$1
src=$2
python3 -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --quiet --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "$venv/bin/pip" install --no-cache-dir --quiet --index-url "$TORCH_INDEX_URL" torch==2.13.0
else
  "$venv/bin/pip" install --no-cache-dir --quiet torch==2.13.0
fi
"$venv/bin/pip" install --no-cache-dir --quiet "$src"
"$venv/bin/python" -c "import torch, service; assert torch.__version__.startswith('2.13.0'); assert torch.version.cuda is None, 'a CUDA build of torch was installed'"
