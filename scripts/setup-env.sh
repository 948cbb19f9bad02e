#!/usr/bin/env bash
# Creates .venv with the pinned CPU development / CI environment (constraints-cpu.txt) and the
# project installed editable, then the command-line tools (scripts/install-tools.sh).
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.bloomz-setup
want=$(cat constraints-cpu.txt pyproject.toml | sha256sum | cut -c1-16)

bash scripts/install-tools.sh

# DeepSpeed's CPU all-reduce op, built here rather than by the first multi-rank start (a start killed
# mid-build leaves torch's lock file behind; runtime/bloomz_runtime/shm_op.py); about 1 s once built.
# Into TORCH_EXTENSIONS_DIR (the Makefile's per-checkout folder). A machine without g++ still sets up.
build_shm_op() {
  .venv/bin/python -m bloomz_runtime.shm_op || echo "[setup] warning: DeepSpeed's all-reduce op did not build" >&2
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  build_shm_op
  exit 0
fi
echo "[setup] Python environment in .venv (pinned by constraints-cpu.txt)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@" 2>&1 | grep -v "is ignored" || true; }
pip install -q --upgrade pip "setuptools<81" wheel
# torch first, from the CPU build (a bare `torch` would pull a multi-GB CUDA build).
pip install -q -c constraints-cpu.txt "torch==2.13.0"
# DeepSpeed's setup.py imports torch: build it against the torch just installed.
pip install -q --no-build-isolation -c constraints-cpu.txt "deepspeed==0.19.8"
pip install -q -c constraints-cpu.txt -e ".[test]"
.venv/bin/python -c "import torch, transformers, deepspeed, grpc, kopf; print('[setup] torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)"
echo "$want" > "$STAMP"
build_shm_op
