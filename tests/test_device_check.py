"""``scripts/device_check.sh`` at its tiny shape on CPU, so the GPU check cannot rot.

The script runs the cuda-marked tests (skipped here), grponorm's native step and stock TRL's
GRPOTrainer on ``random:qwen2.5-tiny`` through ``benchmarks/bench_step.py``, and prints
tokens/s, step time and MFU; this test checks those numbers against each other and against the
FLOP convention of ``grponorm.rl.shapes``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grponorm.rl.shapes import SHAPES, lora_parameter_count, step_flops

ROOT = Path(__file__).resolve().parents[1]
NUM = r"([0-9.]+(?:e[+-]?[0-9]+)?)"
THROUGHPUT = re.compile(
    rf"^throughput: (?P<path>[^:]+): {NUM} tokens/s, step {NUM} s, {NUM} completion \+ "
    rf"{NUM} prompt tokens/step, model FLOPs {NUM}/step \(rollout {NUM}, train {NUM}\), "
    rf"MFU {NUM}% of 790 TFLOP/s$", re.M)


@pytest.mark.model
def test_device_check_tiny_shape_runs_and_reports_consistent_numbers():
    pytest.importorskip("trl")  # the script would pip-install it; tests stay offline
    env = dict(os.environ, DEVICE_CHECK_SHAPE="tiny", PYTHON=sys.executable,
               OMP_NUM_THREADS="1", DEVICE_CHECK_PACK=".devicecheck-absent")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "device check: ok" in out
    assert "cuda tests: exit status 0" in out
    rows = {m["path"]: [float(x) for x in m.groups()[1:]] for m in THROUGHPUT.finditer(out)}
    assert set(rows) == {"grponorm (decode)", "TRL GRPOTrainer"}, out
    shape = SHAPES["qwen2.5-tiny"]
    n_lora = lora_parameter_count(shape, 16, ["q_proj", "k_proj", "v_proj", "o_proj"])
    for path, (tok_s, step_s, completion, prompt, total, rollout, train, mfu) in rows.items():
        assert completion == 1 * 2 * 4, path  # 1 prompt x G=2 x exactly 4 tokens: EOS off
        assert prompt > 0 and step_s > 0 and tok_s > 0 and mfu > 0, path
        rounding = 0.0005 / step_s  # the step time is printed to 3 decimals
        assert tok_s == pytest.approx(completion / step_s, rel=2e-3 + rounding), path
        want = step_flops(shape.matmul_parameter_count(), int(prompt), int(completion),
                          n_lora=n_lora)
        assert (total, rollout, train) == pytest.approx(
            (want["total"], want["rollout"], want["train"]), rel=1e-3), path
        assert mfu / 100 == pytest.approx(total / step_s / 790e12, rel=5e-3 + rounding), path
    assert re.search(r"^result: native / TRL tokens/s = [0-9.]+x$", out, re.M), out
