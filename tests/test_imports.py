"""The package's shape: its public API, no import cycle anywhere (function-level imports
included), and the import-linter contracts in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

ROOT = Path(__file__).resolve().parents[1]


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(
                        child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles_including_function_level_imports():
    graph = grimp.build_graph("grponorm", cache_dir=None)  # every import statement, any depth
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    class G:  # a -> b -> c -> a, d -> a
        modules = {"a", "b", "c", "d"}
        edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}

        def find_modules_directly_imported_by(self, m):
            return self.edges[m]

    assert _cycles(G()) == [["a", "b", "c"]]


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed")
    res = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def test_public_api():
    import grponorm
    from grponorm.bandit import grad_J, hess_J, pi_star, policy, update
    from grponorm.diagnostics.fisher import fisher_record

    assert callable(grponorm.normalize) and callable(grponorm.normalize_with_stats)
    assert callable(grponorm.register_normalizer) and callable(fisher_record)
    X = [[1.0, 0.0], [0.0, 1.0]]
    p = policy(X, [0.0, 0.0])
    assert p.tolist() == [0.5, 0.5] and pi_star(X, 0, [0.0, 0.0])[0] == 0.5
    assert grad_J(X, 0, [0.0, 0.0]).shape == (2,) and hess_J(X, 0, [0.0, 0.0]).shape == (2, 2)
    assert update(X, 0, [0.0, 0.0]).shape == (2,)
    adv = grponorm.normalize([[0.0, 1.0], [1.0, 1.0]], "group_std")
    assert adv[1].tolist() == [0.0, 0.0]


def test_modules_stay_short():
    """No module is much over 500 lines (a module that long is two modules)."""
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "src").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 550}
    assert long == {}
