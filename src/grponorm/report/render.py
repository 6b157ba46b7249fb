"""Render reproduce results as a self-contained report.html (figures embedded) and report.md."""

from __future__ import annotations

import base64
import html
import json
import os
import sys
import traceback
from pathlib import Path

from ..experiments.rows import VerdictCell, as_verdict_cell
from ..stats.paired import Verdict

CSS = """
body{font-family:system-ui,sans-serif;max-width:1500px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left} th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee} .meta{color:#555;font-size:.9em}
.bad{color:#b00020;font-weight:bold} .ok{color:#0a7d28} .neutral{color:#666}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
.pair{display:grid;grid-template-columns:minmax(0,1.15fr) minmax(0,1fr);gap:1.2em;
align-items:start} .figs img{display:block;margin-bottom:.8em}
@media (max-width:1000px){.pair{grid-template-columns:minmax(0,1fr)}}
"""
HEADER = ["quantity", "paper", "ours", "verdict"]


def _figures(summary: dict) -> list[Path]:
    """The figures a summary lists, else every PNG in its run folder."""
    run_dir = Path(summary.get("run_dir", ""))
    if "figures" in summary:
        return [run_dir / f for f in summary["figures"]]
    return sorted(run_dir.glob("*.png")) if run_dir.is_dir() else []


#: CSS class of a verdict cell, by its verdict: a claim the data go against, a value off the
#: paper's, a failed bound or a missing result are bad (red); an open question is neutral
#: (grey); a reproduced claim, a measured value or a direction found where none is claimed ok.
VERDICT_CLASS = {
    Verdict.REPRODUCED: "ok",
    Verdict.CONTRADICTED: "bad",
    Verdict.INCONCLUSIVE: "neutral",
    Verdict.POSITIVE: "ok",
    Verdict.NEGATIVE: "ok",
    Verdict.NO_CLEAR_DIFFERENCE: "neutral",
    Verdict.MEASURED: "ok",
    Verdict.SMALLER: "bad",
    Verdict.DIFFERS: "bad",
    Verdict.VIOLATED: "bad",
    Verdict.NOT_RUN: "bad",
    Verdict.NOT_SUMMARIZED: "bad",
}
assert set(VERDICT_CLASS) == set(Verdict), "every verdict needs its colour"


def _typed(rows: list[list]) -> list[list]:
    """``rows`` with each last (verdict) cell a :class:`VerdictCell`.

    Raises:
        ValueError: If a verdict cell starts with no verdict's label.
    """
    return [[*r[:-1], as_verdict_cell(r[-1])] for r in rows]


def _html_table(rows: list[list], lead: list[str] = ()) -> str:
    """An HTML table of typed rows (:func:`_typed`); the verdict cell is coloured by its
    verdict (:data:`VERDICT_CLASS`)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in [*lead, *HEADER])
    body = []
    for r in rows:
        cells = [f"<td>{html.escape(str(c))}</td>" for c in r[:-1]]
        v = r[-1]
        cells.append(f'<td class="{VERDICT_CLASS[v.verdict]}">{html.escape(str(v))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


#: What a summary that ``report_rows`` cannot read raises: a key or entry missing (a summary of
#: another version), a value of the wrong type or form, a verdict cell with no verdict's label.
SUMMARY_ERRORS = (KeyError, IndexError, TypeError, ValueError)


def _rows(exp, summary: dict, source: Path) -> list[list]:
    """The typed paper-vs-ours rows of one experiment; one bad row naming the error and the
    summary file instead when its summary cannot be read (its traceback goes to stderr)."""
    try:
        return _typed(exp.rows(summary))
    except SUMMARY_ERRORS as exc:  # one bad summary must not cost the whole report
        where = f"{exp.eid}, {source}"
        print(f"[report] {where}: could not summarize:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        note = f"{Verdict.NOT_SUMMARIZED.value} ({where}): {type(exc).__name__}: {exc}"
        return [["(summary)", exp.paper, "-", VerdictCell(note, Verdict.NOT_SUMMARIZED)]]


def _md_table(rows: list[list], lead: list[str] = ()) -> str:
    header = [*lead, *HEADER]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the report's folder (POSIX separators), so that report.md keeps its
    figures when the folder is moved or zipped."""
    return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()


def _img_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}"></p>'


def _provenance(rec: dict) -> str:
    """Where a section's numbers come from and how long they took: ``wall time 12.3 s (ran
    now)``, ``(reused from an earlier run)``, or for a report rebuilt from committed results
    ``from results (committed in abc1234 (2026-12-01)); wall time 5210.4 s (summed over its 160
    runs)``."""
    source = rec.get("from_results")
    if source:
        wall = source.get("wall_time_s")
        timed = ("wall time not recorded" if wall is None
                 else f"wall time {wall} s ({source['wall_time_what']})")
        return f"from results, {source['commit']}; {timed}"
    ran = "reused from an earlier run" if rec.get("skipped") else "ran now"
    return f"wall time {rec['wall_time_s']} s ({ran})"


#: The report's opening answers: (question, [(section, substrings, every match?), ...]). A
#: section's first row whose quantity holds every substring answers it (every such row when
#: the third item is True); a question no row answers says "not run".
HEADLINES = [
    ("Does Std help at one shared learning rate? (language model, Hard)",
     [("E6", ("Hard: PRIMARY",), False)]),
    ("Does Std's benefit survive a tuned learning rate?",
     [("E6-tuned", ("Hard: PRIMARY", "tuned LR"), False),
      ("E3", ("group_std − none, final mean π*, Hard", "SGD, tuned LR"), False),
      ("E3", ("group_std − none, final mean π*, Hard", "Adam, tuned LR"), False)]),
    ("Where on the p̂ axis does Std act? (language model, by base pass rate)",
     [("E6", ("Hard: Std − No-Std by base pass rate",), True),
      ("E6-tuned", ("Hard: Std − No-Std by base pass rate", "tuned LR"), True)]),
    ("Does the Fisher track the reward variance? (language model, same step)",
     [("E5", ("Fisher vs reward variance, same step",), False)]),
    ("Is std the right power of the curvature? (bandit: power 1 − power ½, exact curvature)",
     [("E3", ("oracle_curvature − oracle_std", "Hard", "SGD, tuned LR"), False),
      ("E3", ("oracle_curvature − oracle_std", "Hard", "Adam, tuned LR"), False)]),
]
HEADLINE_HEADER = ["question", "exp", "quantity", "ours", "verdict"]


def headline_rows(by_section: dict[str, list[list]]) -> list[list]:
    """The rows of :data:`HEADLINES` found in ``by_section`` (section -> typed rows):
    ``[question, section, quantity, ours, verdict]``; the question is shown once."""
    out = []
    for question, specs in HEADLINES:
        found = []
        for sec, parts, every in specs:
            hits = [r for r in by_section.get(sec, []) if all(p in str(r[0]) for p in parts)]
            found += [[sec, r[0], r[2], r[3]] for r in (hits if every else hits[:1])]
        if not found:
            found = [["-", "-", "-", VerdictCell(f"{Verdict.NOT_RUN.value}: no row answers it",
                                                 Verdict.NOT_RUN)]]
        out += [[question if i == 0 else "", *f] for i, f in enumerate(found)]
    return out


def verdict_counts(by_section: dict[str, list[list]]) -> list[list]:
    """``[verdict, rows, sections]`` per verdict, most frequent first, over every row."""
    counts: dict[Verdict, list] = {}
    for sec, rows in by_section.items():
        for r in rows:
            c = counts.setdefault(r[-1].verdict, [0, []])
            c[0] += 1
            if sec not in c[1]:
                c[1].append(sec)
    order = sorted(counts.items(), key=lambda kv: (-kv[1][0], list(Verdict).index(kv[0])))
    return [[v, n, ", ".join(secs)] for v, (n, secs) in order]


def _summary_html(heads: list[list], counts: list[list]) -> str:
    rows = []
    for r in heads:
        cells = [f"<td>{html.escape(str(c))}</td>" for c in r[:-1]]
        cells.append(f'<td class="{VERDICT_CLASS[r[-1].verdict]}">{html.escape(str(r[-1]))}'
                     "</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in HEADLINE_HEADER)
    count_rows = "".join(f'<tr><td class="{VERDICT_CLASS[v]}">{html.escape(v.value)}</td>'
                         f"<td>{n}</td><td>{html.escape(secs)}</td></tr>"
                         for v, n, secs in counts)
    return ("<h2 id='summary'>Verdict summary</h2><h3>The headline answers</h3>"
            f"<table id='headlines'><tr>{head}</tr>{''.join(rows)}</table>"
            "<h3>Verdicts over every row</h3><table id='counts'><tr><th>verdict</th>"
            f"<th>rows</th><th>sections</th></tr>{count_rows}</table>")


def _summary_md(heads: list[list], counts: list[list]) -> list[str]:
    lines = ["## Verdict summary", "", "### The headline answers", "",
             "| " + " | ".join(HEADLINE_HEADER) + " |", "|" + "---|" * len(HEADLINE_HEADER)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in heads]
    lines += ["", "### Verdicts over every row", "", "| verdict | rows | sections |",
              "|---|---|---|"]
    lines += [f"| {v.value} | {n} | {secs} |" for v, n, secs in counts]
    return [*lines, ""]


def write_report(root: Path, experiments, records: list[dict], meta: dict) -> Path:
    """Write root/report.html and root/report.md; return the HTML path. The report opens with
    the verdict summary (the headline answers of :data:`HEADLINES` and the count of each
    verdict); each experiment's section then shows its rows with its figures beside them."""
    root = Path(root)
    env = meta["environment"]
    env_line = ", ".join(f"{k} {v}" for k, v in env.items())
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>grponorm reproduce "
         f"({html.escape(meta['profile'])})</title><style>{CSS}</style></head><body>",
         f"<h1>grponorm — reproduction report ({html.escape(meta['profile'])} profile)</h1>",
         f"<p class='meta'>{html.escape(meta['date'])} · wall time {meta['wall_time_s']} s · "
         f"<code>{html.escape(meta['command'])}</code><br>{html.escape(env_line)}</p>"]
    md = [f"# grponorm — reproduction report ({meta['profile']} profile)", "",
          f"{meta['date']} · wall time {meta['wall_time_s']} s · `{meta['command']}`", "",
          env_line, ""]
    by_section: dict[str, list[list]] = {}
    for exp, rec in zip(experiments, records):
        title = f"{exp.eid}: {exp.title}"
        h.append(f"<section id='{exp.eid}'><h2>{html.escape(title)}</h2>")
        md += [f"## {title}", ""]
        if rec.get("status") != "done":
            note = f"{Verdict.NOT_RUN.value}: {rec.get('reason', rec.get('status'))}"
            h.append(f"<p class='bad'>{html.escape(note)}</p></section>")
            md += [f"**{note}**", ""]
            by_section[exp.eid] = [[exp.title, exp.paper, "-", VerdictCell(note, Verdict.NOT_RUN)]]
            continue
        s = rec["summary"]
        rows = _rows(exp, s, root / exp.eid / "done.json")
        where = _provenance(rec)
        h.append(f"<p class='meta'>Paper: {html.escape(exp.paper)} · {html.escape(where)} · "
                 f"run folder <code>{html.escape(str(s.get('run_dir')))}</code></p>")
        figs = _figures(s)
        h.append(f"<div class='pair'><div class='rows'>{_html_table(rows)}</div>"
                 f"<div class='figs'>{''.join(_img_tag(f) for f in figs)}</div></div>")
        md += [f"Paper: {exp.paper} · {where} · `{s.get('run_dir')}`", "", _md_table(rows), ""]
        md += [line for fig in figs for line in (f"![{fig.name}]({_relative(fig, root)})", "")]
        cfg = json.dumps(rec["config"], indent=1, default=str)
        h.append(f"<details><summary>config</summary><pre>{html.escape(cfg)}</pre></details>")
        table = Path(s.get("run_dir", "")) / "table.md"
        if table.exists():
            h.append("<details><summary>full table</summary><pre>"
                     f"{html.escape(table.read_text())}</pre></details>")
        h.append("</section>")
        by_section[exp.eid] = rows
    h.append("</body></html>")
    heads, counts = headline_rows(by_section), verdict_counts(by_section)
    h.insert(3, _summary_html(heads, counts))
    md[6:6] = _summary_md(heads, counts)
    (root / "report.html").write_text("\n".join(h))
    (root / "report.md").write_text("\n".join(md) + "\n")
    return root / "report.html"
