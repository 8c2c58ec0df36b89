#!/usr/bin/env bash
# Every GPU path in a few minutes (bench/gpu_check.py says which), each against the CPU.
# On a machine without a GPU it prints "no GPU" and exits 0. Usage: bash bench/gpu_check.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" bench/gpu_check.py "$@"
