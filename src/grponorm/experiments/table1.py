"""The paper's Table 1 (Fisher proxy vs reward variance): its numbers and the report rows that
E5 (language model) and E5b (bandit) both draw from their correlation tables."""

from __future__ import annotations

from .rows import fmt

__all__ = ["PAPER", "PAPER_LINE", "PAPER_TABLE1", "table1_rows"]

PAPER = {
    "same step": {"pearson": 0.342, "p": 0.008},
    "across steps": {"pearson": -0.028, "p": 0.18},
}
PAPER_SAME = f"{PAPER['same step']['pearson']} (p={PAPER['same step']['p']})"
PAPER_ACROSS = f"{PAPER['across steps']['pearson']} (p={PAPER['across steps']['p']})"
PAPER_LINE = f"mean Pearson {PAPER_SAME} same step; {PAPER_ACROSS} across steps"
PAPER_TABLE1 = f"Paper (Table 1): Fisher vs variance {PAPER_LINE}"


def _same_step_verdict(same: dict, significant: bool) -> str:
    diff = same["mean"] - PAPER["same step"]["pearson"]
    if same["mean"] <= 0:
        return f"differs ({diff:+.3f})"
    if significant:
        return "reproduced (positive, p<0.05)"
    if same.get("steps", 0) < 10:
        return "inconclusive (positive, not significant: too few steps?)"
    return f"differs ({diff:+.3f}, not significant)"


def table1_rows(table1: dict, where: str) -> list[list]:
    """Paper's Table 1: Fisher proxy vs reward variance, same step and across steps."""
    def significant(entry) -> bool:  # a p-value is None where too few steps gave a test
        return entry["p"] is not None and entry["p"] < 0.05

    lags = sorted(table1, key=int)
    same = table1[lags[0]]["pearson"]
    undefined = "inconclusive (no correlation defined: constant values)"
    rows = [[f"Fisher vs reward variance, same step ({where})", PAPER_SAME,
             f"{fmt(same['mean'])} (p={fmt(same['p'], 2)})",
             undefined if same["mean"] is None else _same_step_verdict(same, significant(same))]]
    across = [table1[g]["pearson"] for g in lags[1:]]
    if across and any(a["mean"] is None for a in across):
        rows.append([f"Fisher vs reward variance, across steps ({where})", PAPER_ACROSS,
                     " / ".join(fmt(a["mean"]) for a in across), undefined])
    elif across:
        none_sig = not any(significant(a) for a in across)
        rows.append([f"Fisher vs reward variance, across steps ({where})", PAPER_ACROSS,
                     " / ".join(f"{fmt(a['mean'])} (p={fmt(a['p'], 2)})" for a in across)
                     + f" at lags {', '.join(map(str, lags[1:]))}",
                     "differs (lagged correlation significant)" if not none_sig else
                     "reproduced (lagged correlations small, none significant)"
                     if max(abs(a["mean"]) for a in across) < 0.15 else
                     "inconclusive (large but not significant: too few steps?)"])
    return rows
