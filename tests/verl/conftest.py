"""The verl integration tests need verl itself: they run in `.venv-verl` (scripts/setup_verl.sh).

Where verl is not installed (grponorm's main venv) this folder is not collected at all, so the
main test run neither fails on it nor counts it.
"""

from __future__ import annotations

import importlib.util


def verl_installed() -> bool:
    """True if the real verl package is importable.

    This folder has no ``__init__.py`` (one would make it a package called ``verl`` that shadows
    the real one); pytest puts ``tests/`` on ``sys.path``, where this folder then looks like a
    namespace package ``verl`` -- a spec without an origin. The real package has one.
    """
    spec = importlib.util.find_spec("verl")
    return spec is not None and spec.origin is not None


if not verl_installed():
    collect_ignore_glob = ["test_*.py"]
