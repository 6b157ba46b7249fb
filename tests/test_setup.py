"""scripts/setup.sh and scripts/setup_verl.sh stop with pip's error when an install fails.

Each script runs from a copy in a temporary project, with pip's configuration ignored and its
index unreachable, so every install fails. Stub ``grponorm``, ``torch`` and ``verl`` packages on
PYTHONPATH let the scripts' closing import check pass: a script that swallowed pip's failure
would exit 0, and the test then fails.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:9/simple"  # the discard port: nothing listens there


def _stubs(root: Path) -> Path:
    """Importable stand-ins for what the scripts' last line imports."""
    for name in ("grponorm", "torch", "verl"):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text("__version__ = 'stub'\n")
    return root


def _offline_env(stubs: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # no /etc/xdg/pip, /etc/pip.conf: no local wheels
        PIP_INDEX_URL=UNREACHABLE,
        PIP_RETRIES="0",
        PIP_DEFAULT_TIMEOUT="5",
        PIP_NO_CACHE_DIR="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PYTHONPATH=str(stubs),
        PYTHON=sys.executable,  # the scripts make their venv with $PYTHON
    )
    return env


@pytest.mark.parametrize("script", ["setup.sh", "setup_verl.sh"])
def test_failed_install_exits_nonzero_with_pips_error(script, tmp_path):
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / script, project / "scripts" / script)
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    env = _offline_env(_stubs(tmp_path / "stubs"))
    # the stubs pass the scripts' closing check: only the installs can fail
    check = subprocess.run([sys.executable, "-c", "import grponorm, torch, verl"], env=env)
    assert check.returncode == 0

    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(project / "scripts" / script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{script} exited 0 although pip could not install:\n{out}"
    assert "ERROR:" in proc.stderr, out  # pip's own error is shown
    assert f"{script}: 'pip install " in proc.stderr, out  # and which install failed
    assert "| torch stub" not in proc.stdout, out  # it stopped before the closing check
    assert elapsed < 60, f"{script} took {elapsed:.0f} s to fail"
