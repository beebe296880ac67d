#!/usr/bin/env bash
# Create .venv with a CPU build of PyTorch and seqrec (editable) plus test tools.
# Idempotent: a second run only checks. torch is installed first and pinned, so nothing
# later can pull a multi-GB CUDA build (set SEQREC_TORCH to choose another version).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=${SEQREC_TORCH:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "$TORCH" numpy 2>&1 | grep -v "^WARNING: Location" || true
fi
if ! .venv/bin/python -c "import seqrec, polars, yaml, tqdm, ninja, pytest, matplotlib, tensorboard, wandb, optuna, fastapi, uvicorn, httpx, onnx, onnxscript, onnxruntime" 2>/dev/null; then
  # --constraint keeps the torch we just installed
  .venv/bin/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > .venv/torch-pin.txt
  .venv/bin/pip install -q -c .venv/torch-pin.txt -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -c "import seqrec, torch; print(f'seqrec {seqrec.__version__}, torch {torch.__version__}')"
if .venv/bin/pip list 2>/dev/null | grep -qi '^nvidia-'; then
  echo "warning: CUDA packages (nvidia-*) are installed in .venv" >&2
fi
