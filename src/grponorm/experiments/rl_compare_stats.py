"""E6's verdicts: paired comparisons over seeds (``grponorm.stats.compare``) of Std vs No-Std at
the shared learning rate, at each normalizer's cross-fitted tuned learning rate, at each fixed
learning rate of a sweep, and by the base pass rate of the prompts; rliable's IQM and
probability of improvement beside them.

Every comparison pairs runs by seed: the same seed gives both arms the same problems in the same
order and the same LoRA init, so the per-seed difference removes the draw they share.

Pre-registered reading (docs/e6-preregistration.md). When a grid has the pre-registered settings
(:data:`PREREGISTERED_SETTINGS`) and every confirmatory seed (8-31), the shared-LR rows are, in
this order: the **confirmatory** rows on seeds 8-31 (n = 24, 95% intervals: the verdict rows);
the primary metric on all seeds 0-31, the pilot's seeds 0-7 pooled (shown beside, as the
pre-registration promised); and the **extension** to seeds 8-47 (n = 40), a deviation: it was
decided after the n = 24 look, so the family's alpha = 0.05 is split over the two looks
(Bonferroni, alpha / 2 = 0.025 per look): its intervals are 97.5% and its reading against the
paper's effect is the TOST at alpha = 0.025. Other grids get one row per metric over all
their seeds.

Tuned learning rate (docs/e6-tuned-preregistration.md). For each slice and each arm separately,
the seeds that ran every learning rate of the sweep are split by index parity into two folds; a
seed's tuned LR is the one with the highest mean primary metric (``acc_primary``) over the other
fold (ties: the smaller LR) and its value is its own ``acc_primary`` at that LR
(:func:`grponorm.stats.crossfit.crossfit`, the rule E3 uses). No seed's value chooses its own
LR. Rows: Hard, Easy and the interaction (Std − No-Std on Hard) − (Std − No-Std on Easy), paired
by seed; the LR each arm and fold chose, flagged at the edge of the grid. On the pre-registered
tuned grid fewer than its 40 seeds give "interim, n = k, not the pre-registered reading" rows
with no verdict drawn.
"""

from __future__ import annotations

import math

import numpy as np

from ..stats import compare, effect_reading
from ..stats.crossfit import crossfit, fold_choices
from ..stats.paired import Verdict
from .robust import rliable_rows
from .rows import VerdictCell, effect_cell, entry

__all__ = ["EXPECTED", "PAPER", "PAPER_EFFECT", "PREREGISTERED_SETTINGS", "PREREGISTRATION",
           "TUNED_PREREGISTRATION", "base_rates", "comparisons",
           "preregistration_mismatches", "rliable_inputs", "rliable_rows", "tuned_comparisons"]

#: The paper's Figure 2 (Qwen2.5-Math-1.5B, GSM8K; smoothed training sample accuracy, %).
PAPER = {"easy": {"group_std": 92, "none": 91}, "hard": {"group_std": 81, "none": 76}}
#: The paper's direction (Std ahead) and size of the effect (a fraction), per slice.
EXPECTED = +1
PAPER_EFFECT = {s: (p["group_std"] - p["none"]) / 100 for s, p in PAPER.items()}


#: The metrics compared at the shared LR: the pre-registered primary one (train accuracy over
#: the last ``primary_window`` steps, docs/e6-preregistration.md) first, then the secondary ones.
METRICS = ("acc_primary", "acc_end", "eval_end", "eval_mean")
PRIMARY = METRICS[0]

#: docs/e6-preregistration.md: the seeds of each reading and the looks at the data.
PREREGISTRATION = {
    "doc": "docs/e6-preregistration.md",
    "confirmatory_seeds": tuple(range(8, 32)),  # n = 24: the verdict rows
    "pilot_seeds": tuple(range(0, 8)),  # chose the metric; pooled only in the all-seeds row
    "extension_seeds": tuple(range(8, 48)),  # n = 40, decided after the n = 24 look
    "alpha": 0.05,
    "looks": 2,  # n = 24, then n = 40: Bonferroni, alpha / looks per look
}
#: The settings both pre-registrations fix (docs/e6-preregistration.md "The pilot",
#: docs/e6-tuned-preregistration.md "Settings"); ``lr`` is the shared one.
PREREGISTERED_SETTINGS = {
    "model": "embedded", "dtype": "auto", "task": "arithmetic", "levels": ["add1", "sub1"],
    "slices": ["easy", "hard"], "normalizers": ["group_std", "none"], "lora_r": 16,
    "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"], "optimizer": "adamw",
    "lr": 5e-4, "steps": 20, "prompts_per_step": 4, "G": 8, "max_grad_norm": 1.0,
    "temperature": 0.7, "n_train": 256, "n_eval": 64, "eval_every": 10, "primary_window": 10,
    "threads": 1,
}
#: docs/e6-tuned-preregistration.md: the AdamW LR grid, its seeds (fixed n = 40, one look).
TUNED_PREREGISTRATION = {
    "doc": "docs/e6-tuned-preregistration.md",
    "optimizer": "adamw",
    "lrs": (1.5e-4, 5e-4, 1.5e-3, 5e-3),
    "slices": ("easy", "hard"),
    "seeds": tuple(range(8, 48)),
}
#: The paper's effect of the interaction row (none: docs/e6-tuned-preregistration.md, row 3).
INTERACTION = "hard-easy"


def preregistration_mismatches(settings: dict) -> list[str]:
    """The pre-registered settings (:data:`PREREGISTERED_SETTINGS`) a grid's ``settings``
    (its config as a dict) does not have, as ``"field: got X, pre-registered Y"``; empty when
    the grid is the pre-registered one."""
    out = []
    for k, want in PREREGISTERED_SETTINGS.items():
        got = settings.get(k)
        got = list(got) if isinstance(got, tuple) else got
        same = (math.isclose(float(got), float(want), rel_tol=1e-12)
                if isinstance(want, float) and isinstance(got, (int, float)) else got == want)
        if not same:
            out.append(f"{k}: got {got!r}, pre-registered {want!r}")
    return out


def _key(slice_, norm, opt, lr) -> str:
    return f"{slice_}/{norm}/{opt}/lr{lr:g}"


def _by_seed(points: dict, key: str, metric: str) -> dict[int, float]:
    """seed -> ``metric`` of the finished runs of a grid point (runs without it left out)."""
    return {int(r["seed"]): float(r[metric]) for r in points.get(key, [])
            if r.get(metric) is not None}


def _paired(points: dict, ka: str, kb: str, metric: str, seeds=None):
    """Per-seed values of ``metric`` for the seeds both points ran (paired by seed), in seed
    order; only ``seeds`` when given. Returns (a, b, seeds)."""
    a, b = _by_seed(points, ka, metric), _by_seed(points, kb, metric)
    both = sorted(set(a) & set(b) & (set(seeds) if seeds is not None else set(a)))
    return [a[s] for s in both], [b[s] for s in both], both


def _no_verdict(reason: str) -> VerdictCell:
    return VerdictCell(f"{Verdict.INCONCLUSIVE.value} ({reason}: no verdict drawn)",
                       Verdict.INCONCLUSIVE)


def _row(what: str, slice_: str, metric: str, a: list, b: list, extra: dict,
         confidence: float = 0.95, interim: str | None = None) -> dict:
    """One comparison: its numbers, ``text`` (interval, n) and ``cell`` (the verdict column,
    with the seeds that would resolve the paper's effect and the reading against that effect,
    ``stats.effect_reading``, TOST at ``alpha = 1 - confidence``), formatted as every
    experiment's are (``rows.entry``); ``verdict`` is the bare label. ``interim``: a reason
    no verdict is drawn (the cell says so; the numbers stay)."""
    c = compare(a, b, paired=True, confidence=confidence)
    effect = PAPER_EFFECT.get(slice_, 0.03)
    cells = entry(c, EXPECTED, effect)
    d = np.subtract(a, b)  # (n,) paired differences
    reading = effect_reading(d, EXPECTED * effect, confidence=confidence) if len(a) else None
    largest = None if reading is None or not reading.resolvable else reading.largest
    smaller = bool(reading is not None and reading.smaller)
    cell = effect_cell(cells["verdict"], largest, EXPECTED * effect, smaller)
    return {"what": what, "slice": slice_, "metric": metric, **extra, "n": c.n,
            "confidence": confidence,
            "mean_a": float(np.mean(a)) if a else None, "mean_b": float(np.mean(b)) if b else None,
            "diff": c.diff, "low": c.low, "high": c.high, "p": c.p, "sd": c.sd,
            "verdict": c.verdict(EXPECTED), "paper_effect": effect,
            "seeds_needed": c.seeds_needed(effect) if c.n >= 2 else None,
            "largest_allowed": largest, "smaller_than_paper": smaller,
            "excludes_zero": bool(c.resolvable and (c.low > 0 or c.high < 0)),
            "excludes_paper": bool(c.resolvable and not c.low <= EXPECTED * effect <= c.high),
            "text": cells["text"], "interim": interim, "a": list(map(float, a)),
            "b": list(map(float, b)), "cell": _no_verdict(interim) if interim else cell}


def _seed_span(seeds) -> str:
    seeds = sorted(seeds)
    contiguous = seeds == list(range(seeds[0], seeds[-1] + 1))
    return f"{seeds[0]}–{seeds[-1]}" if contiguous else ",".join(map(str, seeds))


def _excludes(r: dict) -> str:
    """What a row's two-sided interval excludes of 0 and of the paper's effect."""
    level = f"{100 * r['confidence']:g}%"
    paper = f"the paper's {EXPECTED * r['paper_effect']:+.3f}".replace("-", "\N{MINUS SIGN}")
    gone = [w for w, x in (("0", r["excludes_zero"]), (paper, r["excludes_paper"])) if x]
    kept = [w for w, x in (("0", r["excludes_zero"]), (paper, r["excludes_paper"])) if not x]
    if not gone:
        return f"the {level} interval excludes neither 0 nor {paper}"
    return f"the {level} interval excludes {' and '.join(gone)}" + (
        f", not {kept[0]}" if kept else "")


def _preregistered_rows(points: dict, pilot: dict | None, s: str, arms: tuple,
                        key: tuple) -> list[dict]:
    """The shared-LR rows of slice ``s`` as docs/e6-preregistration.md reads them."""
    pre = PREREGISTRATION
    confirm, extension = pre["confirmatory_seeds"], pre["extension_seeds"]
    per_look = 1 - pre["alpha"] / pre["looks"]  # 0.975: Bonferroni over the two looks
    ka, kb = _key(s, arms[0], *key), _key(s, arms[1], *key)
    rows = []
    for metric in METRICS:
        xa, xb, seeds = _paired(points, ka, kb, metric, confirm)
        if len(seeds) == len(confirm):
            role = "the verdict row" if metric == PRIMARY else "secondary"
            rows.append(_row(f"pre-registered, confirmatory seeds {_seed_span(confirm)} "
                             f"(n = {len(confirm)}, 95% CI; {role})", s, metric, xa, xb,
                             {"reading": "confirmatory", "seeds": seeds}))
        if metric == PRIMARY:
            everything = (*pre["pilot_seeds"], *confirm)
            pooled = {k: [*points.get(k, []), *(pilot or {}).get(k, [])] for k in (ka, kb)}
            xa, xb, seeds = _paired(pooled, ka, kb, metric, everything)
            if len(seeds) == len(everything):
                rows.append(_row(f"all seeds {_seed_span(everything)} (pilot "
                                 f"{_seed_span(pre['pilot_seeds'])} pooled, same settings; "
                                 "beside the confirmatory row, n = "
                                 f"{len(everything)}, 95% CI)", s, metric, xa, xb,
                                 {"reading": "all seeds", "seeds": seeds}))
            else:
                rows.append({"what": f"all seeds {_seed_span(everything)}", "slice": s,
                             "metric": metric, "reading": "all seeds", "n": len(seeds),
                             "mean_a": None, "text": f"{len(seeds)} of {len(everything)} seeds",
                             "cell": VerdictCell(
                                 f"{Verdict.NOT_RUN.value}: the pilot's runs (seeds "
                                 f"{_seed_span(pre['pilot_seeds'])}) were not given "
                                 "(pilot_dir)", Verdict.NOT_RUN)})
        xa, xb, seeds = _paired(points, ka, kb, metric, extension)
        if len(seeds) == len(extension):
            r = _row(f"extended to seeds {_seed_span(extension)} (n = {len(extension)}; a "
                     f"deviation decided after the n = {len(confirm)} look: alpha "
                     f"{pre['alpha']:g} split over {pre['looks']} looks, Bonferroni, "
                     f"{100 * per_look:g}% CI)", s, metric, xa, xb,
                     {"reading": "extension", "seeds": seeds}, confidence=per_look)
            r["cell"] = VerdictCell(f"{r['cell']}; {_excludes(r)}", r["cell"].verdict)
            rows.append(r)
    return rows


def tuned_comparisons(points: dict, slices: list, arms: tuple, opt: str, lrs: list,
                      metric: str = PRIMARY, preregistered: bool = False) -> list[dict]:
    """Cross-fitted tuned-LR rows (module docstring): per slice Std − No-Std at each arm's
    cross-fitted LR, then the Hard − Easy interaction when both slices were swept.

    Args:
        points: ``slice/norm/opt/lrX`` -> per-seed run summaries.
        slices: the swept slices. lrs: the LRs of the sweep (any order; ties go to the smaller).
        preregistered: the grid is docs/e6-tuned-preregistration.md's: its seeds only, and
            "interim" rows (no verdict) until all of them have every LR.
    """
    lrs = sorted(float(x) for x in lrs)
    pre = TUNED_PREREGISTRATION
    rows, gaps = [], {}
    for s in slices:
        per = {arm: {lr: _by_seed(points, _key(s, arm, opt, lr), metric) for lr in lrs}
               for arm in arms}
        ran = set().union(*(set(v) for d in per.values() for v in d.values()))
        complete = sorted(set.intersection(*(set(v) for d in per.values() for v in d.values())))
        if preregistered:
            ran &= set(pre["seeds"])
            complete = [x for x in complete if x in pre["seeds"]]
        left_out = sorted(ran - set(complete))
        if not complete:
            if ran:  # runs of the sweep exist, but no seed has them all yet
                rows.append({"what": f"tuned LR, cross-fitted ({opt} of "
                                     f"{', '.join(f'{x:g}' for x in lrs)})", "slice": s,
                             "metric": metric, "reading": "tuned", "n": 0, "mean_a": None,
                             "left_out": left_out,
                             "text": f"no seed has every LR yet ({len(left_out)} seeds ran "
                                     "some)",
                             "cell": VerdictCell(f"{Verdict.NOT_RUN.value}: no seed has run "
                                                 "every LR of the sweep", Verdict.NOT_RUN)})
            continue
        values, chosen = {}, {}
        for arm in arms:
            picked, vals = crossfit({lr: np.array([per[arm][lr][x] for x in complete])
                                     for lr in lrs})  # (S,), (S,)
            values[arm] = vals
            chosen[arm] = fold_choices(picked)
        edge = [f"{arm} {fold} fold at {lr:g}" for arm in arms
                for fold, lr in chosen[arm].items() if lr is not None and lr in (lrs[0], lrs[-1])]
        k = len(complete)
        interim = (f"interim, n = {k}, not the pre-registered reading"
                   if preregistered and k < len(pre["seeds"]) else None)
        extra = {"reading": "tuned", "optimizer": opt, "lrs": lrs, "seeds": complete,
                 "left_out": left_out, "chosen": chosen, "edge": edge, "in_sample": k == 1}
        choice = "; ".join(f"{arm}: even {c['even']:g}" + (f", odd {c['odd']:g}"
                                                          if c["odd"] is not None else "")
                           for arm, c in chosen.items())
        rows.append(_row(f"tuned LR, cross-fitted by seed parity ({opt} of "
                         f"{', '.join(f'{x:g}' for x in lrs)}; chosen {choice}"
                         + (f"; at the grid's edge: {', '.join(edge)}" if edge else "")
                         + (f"; {len(left_out)} seed{'s' * (len(left_out) != 1)} lacking "
                            "an LR left out" if left_out else "") + ")", s, metric,
                         list(values[arms[0]]), list(values[arms[1]]), extra, interim=interim))
        gaps[s] = dict(zip(complete, values[arms[0]] - values[arms[1]], strict=True))
    if "hard" in gaps and "easy" in gaps:
        both = sorted(set(gaps["hard"]) & set(gaps["easy"]))
        hard, easy = [gaps["hard"][x] for x in both], [gaps["easy"][x] for x in both]
        c = compare(hard, easy, paired=True)
        e = entry(c, None)
        interim = (f"interim, n = {len(both)}, not the pre-registered reading"
                   if preregistered and len(both) < len(pre["seeds"]) else None)
        rows.append({"what": "interaction at the tuned LR: (Std − No-Std on Hard) − (Std − "
                             "No-Std on Easy), paired by seed (no target)",
                     "slice": INTERACTION, "metric": metric, "reading": "interaction",
                     "optimizer": opt, "seeds": both, "n": c.n, "confidence": 0.95,
                     "mean_a": float(np.mean(hard)) if both else None,
                     "mean_b": float(np.mean(easy)) if both else None,
                     "diff": c.diff, "low": c.low, "high": c.high, "p": c.p, "sd": c.sd,
                     "verdict": e["verdict"].verdict, "text": e["text"], "interim": interim,
                     "cell": _no_verdict(interim) if interim else e["verdict"]})
    return rows


def comparisons(points: dict, slices: list, arms: tuple, shared: tuple,
                sweeps: dict[str, list], sweep_slices: list, *, preregistered: bool = False,
                pilot: dict | None = None, tuned_preregistered: bool = False) -> list[dict]:
    """Std (``arms[0]``) minus No-Std (``arms[1]``), paired by seed: the shared-LR rows (the
    pre-registered reading when ``preregistered``), then per optimizer swept the cross-fitted
    tuned-LR rows and the rows at each other fixed LR of the sweep.

    Args:
        points: ``slice/norm/opt/lrX`` -> per-seed run summaries.
        shared: ``(optimizer, lr)`` of the main grid.
        sweeps: optimizer -> the LRs swept with it (the shared one included), on
            ``sweep_slices``.
        preregistered: the main grid has docs/e6-preregistration.md's settings.
        pilot: the pilot's points (seeds 0-7), pooled only in the all-seeds row.
        tuned_preregistered: the sweep is docs/e6-tuned-preregistration.md's.
    """
    a, b = arms
    opt0, lr0 = shared
    rows = []
    for s in slices:
        xa, _, seeds = _paired(points, _key(s, a, opt0, lr0), _key(s, b, opt0, lr0), PRIMARY)
        if preregistered and set(PREREGISTRATION["confirmatory_seeds"]) <= set(seeds):
            rows += _preregistered_rows(points, pilot, s, arms, shared)
            continue
        for metric in METRICS:
            xa, xb, _ = _paired(points, _key(s, a, opt0, lr0), _key(s, b, opt0, lr0), metric)
            if xa:  # on a part of the tuned grid's seeds: interim too
                short = tuned_preregistered and len(xa) < len(TUNED_PREREGISTRATION["seeds"])
                rows.append(_row(f"shared LR ({opt0}, {lr0:g})", s, metric, xa, xb,
                                 {"reading": "shared", "optimizer": opt0, "lr_a": lr0,
                                  "lr_b": lr0},
                                 interim=f"interim, n = {len(xa)}, not the pre-registered "
                                         "reading" if short else None))
    swept = [s for s in slices if s in sweep_slices]
    for opt, lrs in sweeps.items():
        if not swept:
            continue
        pre = tuned_preregistered and opt == TUNED_PREREGISTRATION["optimizer"]
        if len(lrs) >= 2:  # one LR has nothing to tune: its fixed-LR rows only
            rows += tuned_comparisons(points, swept, arms, opt, lrs, preregistered=pre)
        for s in swept:
            for lr in sorted(lrs):
                if (opt, lr) == (opt0, lr0):
                    continue  # the shared-LR rows above
                seeds = TUNED_PREREGISTRATION["seeds"] if pre else None
                xa, xb, got = _paired(points, _key(s, a, opt, lr), _key(s, b, opt, lr),
                                      PRIMARY, seeds)
                if xa:
                    interim = (f"interim, n = {len(got)}, not the pre-registered reading"
                               if pre and len(got) < len(seeds) else None)
                    rows.append(_row(f"fixed LR ({opt}, {lr:g}; secondary)", s, PRIMARY, xa,
                                     xb, {"reading": "fixed LR", "optimizer": opt, "lr_a": lr,
                                          "lr_b": lr, "seeds": got}, interim=interim))
    return rows


def base_rates(points: dict, slices: list, arms: tuple, shared: tuple) -> dict:
    """Per slice, the training accuracy of the main grid's runs (both arms, every seed): at the
    start (``acc_start``, the first summary window) and over the primary window
    (``acc_primary``), with the paper's range for that slice (its Figure 2, both arms)."""
    out = {}
    for s in slices:
        runs = [r for arm in arms for r in points.get(_key(s, arm, *shared), [])]
        if not runs:
            continue
        paper = PAPER.get(s)
        out[s] = {"acc_start": float(np.mean([r["acc_start"] for r in runs])),
                  "acc_primary": float(np.mean([r[PRIMARY] for r in runs
                                                if r.get(PRIMARY) is not None])),
                  "runs": len(runs),
                  "paper": sorted(paper.values()) if paper else None}
    return out


def rliable_inputs(rows: list[dict], reading: str) -> dict[str, tuple[list, list]]:
    """slice -> (Std's, No-Std's) per-seed primary values behind the comparison rows of
    ``reading`` (``"confirmatory"``, ``"shared"``, ``"tuned"``: the cross-fitted values)."""
    return {r["slice"]: (r["a"], r["b"]) for r in rows
            if r.get("reading") == reading and r.get("metric") == PRIMARY and "a" in r}
