#!/usr/bin/env bash
# Create .venv-verl (if missing) for the verl integration tests (tests/verl): verl 0.9.1 without
# its GPU stack, plus what `verl.trainer.ppo.core_algos` and `verl.trainer.ppo.ray_trainer` import
# on a CPU machine, and grponorm itself (editable, --no-deps) so that its `verl.plugins` entry
# point is registered. verl pins transformers < 5.11 and grponorm's main venv has a newer one:
# hence a venv of its own. Idempotent: a second run only re-checks. torch is pinned to the local
# CPU wheel 2.13.0 (a bare `torch` would pull a multi-GB CUDA build).
# Then: .venv-verl/bin/python -m pytest tests/verl -q
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-verl
pipq() {
  # Quiet: on success print only what is not pip's note on the local index or its list of verl
  # requirements left out on purpose (vllm, wandb, ...); on failure print everything and stop.
  local log rc=0
  log=$(mktemp)
  "$VENV/bin/python" -m pip install -q "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$log" >&2
    rm -f "$log"
    echo "setup_verl.sh: 'pip install $*' failed (exit status $rc)" >&2
    return "$rc"
  fi
  grep -v -e "^WARNING: Location" -e "^ERROR: pip's dependency resolver" \
    -e "requires .*, which is not installed" -e "^[a-z0-9-]* [0-9.]* requires " "$log" || true
  rm -f "$log"
}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pipq --upgrade pip
# The CPU wheel 2.13.0, pinned here (and in setup.sh) only: grponorm declares a torch range
# (pyproject.toml, docs/install.md); with no torch installed a range would pull PyPI's CUDA build.
# The constraint file holds the later installs (transformers, peft, ...) to that torch.
TORCH_PIN="torch==2.13.0"
TORCH_CONSTRAINT=$(mktemp)
trap 'rm -f "$TORCH_CONSTRAINT"' EXIT
echo "$TORCH_PIN" >"$TORCH_CONSTRAINT"
pipq "$TORCH_PIN" "numpy>=2,<3"
# verl and torchdata without their dependency trees (vllm, flash-attn, a torch of their own, ...)
pipq --no-deps "verl==0.9.1" "torchdata==0.11.0"
# What `import verl` and the estimator code need: core_algos ...
pipq -c "$TORCH_CONSTRAINT" "transformers>=5.5.3,!=5.6.0,<5.11" "ray>=2.41" \
  "tensordict>=0.8,!=0.9.0,<=0.10.0" pyvers "omegaconf>=2.3" "hydra-core>=1.3" codetiming orjson \
  cloudpickle msgpack protobuf jsonschema attrs referencing rpds-py jsonschema-specifications \
  "pytest>=8"
# ... and ray_trainer.compute_advantage, the function that calls estimators in training.
pipq -c "$TORCH_CONSTRAINT" datasets pillow peft cachetools fastapi uvicorn
pipq --no-deps -e .
"$VENV/bin/python" -c "import verl, torch, grponorm; print('verl', verl.__version__, '| torch', \
torch.__version__, '| grponorm', grponorm.__version__)"
