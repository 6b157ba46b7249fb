"""``pip install .`` into a venv that already holds another torch release keeps that torch.

grponorm declares a torch range (pyproject.toml, docs/install.md), not the exact CPU wheel of
its embedded venv (scripts/setup.sh pins torch==2.13.0 there only). This test builds a fresh
venv holding a torch release other than 2.13.0, installs grponorm into it twice --
``pip install --no-deps .``, then plain ``pip install .`` with its dependencies -- checks after
each that torch's version is the one the venv had, and runs a smoke set on that torch.

Which other torch: 2.14.1 (``GRPONORM_OTHER_TORCH`` overrides it). Every torch wheel on PyPI for
x86_64 Linux is a CUDA build that imports only beside its nvidia-* libraries (measured here:
``pip install --no-deps torch==2.14.1`` then ``import torch`` fails with "libcudnn.so.9: cannot
open shared object file"), so no release is small; CPU-only wheels live on PyTorch's own index,
which this machine does not reach. 2.14.1 and its CUDA 13 libraries lie on this machine's disk
(pip takes them with no download), it is a CUDA build like the GPU stacks grponorm targets
(torch 2.11 + CUDA 13), and its import on a CPU machine works. Measured on this machine (2 cores
busy with other jobs): the venv held 5.8 GB, torch's install took 126 s, the test 353 s in all
(its deletion of the venv at the end included).

Slow (a multi-GB install): CI runs ``-m "not slow"``; run it with
``.venv/bin/python -m pytest tests/test_install.py -m slow -s``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
OTHER_TORCH = os.environ.get("GRPONORM_OTHER_TORCH", "2.14.1")

# Run by the venv's python: import grponorm, normalize a batch (numpy and torch), one exact
# bandit update, grponorm's CPU probe, and a tiny attention forward on that torch. Prints JSON.
SMOKE = r"""
import json, math
import numpy as np
import torch
import grponorm
from grponorm import normalize
from grponorm.bandit.exact import update
from grponorm.hardware import cpu_info
from grponorm.rl.attention import gqa_attention_forward

out = {"torch": torch.__version__, "grponorm": grponorm.__version__}
rewards = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
out["adv_np"] = normalize(rewards, "group_std").tolist()
adv_t = normalize(torch.tensor(rewards, dtype=torch.float32), "group_std")
out["adv_torch_type"] = type(adv_t).__name__ + ":" + str(adv_t.dtype)
out["adv_torch"] = adv_t.tolist()
out["bandit_theta"] = update(np.eye(3), 0, np.zeros(3), "grpo", eta=1.0).tolist()
out["cpu_capability"] = cpu_info().capability

g = torch.Generator().manual_seed(0)
B, H, Hkv, L, D = 2, 4, 2, 5, 8
q = torch.randn(B, H, L, D, generator=g)
k = torch.randn(B, Hkv, L, D, generator=g)
v = torch.randn(B, Hkv, L, D, generator=g)
got, _ = gqa_attention_forward(None, q, k, v, None, D ** -0.5)
kk, vv = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
ref = (torch.softmax(q @ kk.transpose(2, 3) * D ** -0.5, dim=-1) @ vv).transpose(1, 2)
out["attn_shape"] = list(got.shape)
out["attn_max_err"] = float((got - ref).abs().max())
print("SMOKE " + json.dumps(out))
"""


def _run(cmd: list[str], timeout: float = 1800) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-4000:]}"
                             f"\n{r.stderr[-4000:]}")
    return r


def _torch_version(py: Path) -> str:
    """``torch.__version__`` (e.g. "2.14.1+cu130"), as the venv imports it."""
    return _run([str(py), "-c", "import torch; print(torch.__version__)"]).stdout.strip()


def _torch_dist(py: Path) -> str:
    """torch's installed distribution: its version (no local tag, "2.14.1"), installer and
    number of files; another torch put in its place changes the version and the file count."""
    code = ("import importlib.metadata as m; d = m.distribution('torch'); "
            "print(d.version, d.read_text('INSTALLER'), len(d.files or []))")
    return _run([str(py), "-c", code]).stdout.strip()


def _smoke(py: Path) -> dict:
    r = _run([str(py), "-c", SMOKE])
    line = next(x for x in r.stdout.splitlines() if x.startswith("SMOKE "))
    return json.loads(line[len("SMOKE "):])


def _check_smoke(s: dict, torch_version: str) -> None:
    assert s["torch"] == torch_version
    assert s["grponorm"] == "0.1.0"
    # One success in four: (1 - 0.25) / 0.5 = 1.5 (Bessel std); an all-equal group gets exactly 0.
    assert s["adv_np"][0] == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-3)
    assert s["adv_np"][1] == [0.0, 0.0, 0.0, 0.0]
    assert s["adv_torch_type"] == "Tensor:torch.float32"
    assert s["adv_torch"][0] == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-3)
    assert s["adv_torch"][1] == [0.0, 0.0, 0.0, 0.0]
    # Exact GRPO step from a uniform policy over 3 one-hot arms, eta = 1:
    # theta = (e_a - p) pi* / sqrt(pi* (1 - pi*)) = (2/3, -1/3, -1/3) / sqrt(2).
    expected = [x / 2**0.5 for x in (2 / 3, -1 / 3, -1 / 3)]
    assert s["bandit_theta"] == pytest.approx(expected, rel=1e-12)
    assert isinstance(s["cpu_capability"], str) and s["cpu_capability"]
    assert s["attn_shape"] == [2, 5, 4, 8]
    assert s["attn_max_err"] < 1e-5


def test_pip_install_keeps_another_torch(tmp_path):
    venv = tmp_path / "venv"
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    t0 = time.perf_counter()
    try:
        _run([sys.executable, "-m", "venv", str(venv)])
        r = subprocess.run([*pip, f"torch=={OTHER_TORCH}"], capture_output=True, text=True,
                           timeout=1800)
        if r.returncode != 0:  # no such release reachable from here: nothing of grponorm's ran
            pytest.skip(f"cannot install torch=={OTHER_TORCH} here: {r.stderr[-500:]}")
        before = _torch_version(py)
        dist_before = _torch_dist(py)
        assert before.split("+")[0] == OTHER_TORCH
        assert before != "2.13.0+cpu"
        t_torch = time.perf_counter() - t0

        # 1. --no-deps, plus only what the smoke set imports (numpy; torch is not touched).
        _run([*pip, "--no-deps", str(ROOT)])
        assert _torch_version(py) == before
        assert _torch_dist(py) == dist_before
        _run([*pip, "numpy>=1.26"])
        assert _torch_version(py) == before
        _check_smoke(_smoke(py), before)

        # 2. Plain `pip install .` on the same venv: the dependencies are resolved and installed
        # (pandas and rliable arrive), and torch stays the venv's own.
        _run([*pip, str(ROOT)])
        assert _torch_version(py) == before
        _run([str(py), "-c", "import pandas, rliable, scipy, matplotlib"])
        assert _torch_dist(py) == dist_before
        _check_smoke(_smoke(py), before)

        size_mb = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file()) / 2**20
        print(f"\nother torch {before}: venv {size_mb:.0f} MB, torch install {t_torch:.0f} s, "
              f"whole test {time.perf_counter() - t0:.0f} s")
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # GBs: pytest keeps tmp_path of recent runs
