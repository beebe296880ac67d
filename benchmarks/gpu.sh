#!/usr/bin/env bash
# GPU benchmark (issue 21): one markdown table, also written to benchmarks/gpu_results.md and .json.
#   bash benchmarks/gpu.sh              # on one NVIDIA GPU, under 5 minutes
#   bash benchmarks/gpu.sh --dry-run    # tiny sizes on the CPU, well under a minute (results go to the temp folder)
# Other options: python benchmarks/gpu_bench.py --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
exec "$PY" benchmarks/gpu_bench.py "$@"
