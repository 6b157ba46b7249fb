"""`grponorm reproduce` renders a report whose every section has its table and real figures."""

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from grponorm.experiments.bandit_sampled import OPT_NAMES as OPT_NAME
from grponorm.experiments.rows import VerdictCell, fmt
from grponorm.report import render
from grponorm.report import reproduce as rp
from grponorm.report.render import VERDICT_CLASS
from grponorm.stats.paired import Verdict

TINY = {
    "E1": dict(n_instances=60, n_lemma4=6, ball_points=3, traj_steps=300, traj_seeds=2,
               traj_settings=[(5, 3, None)]),
    "E2": dict(n=8, K=3, T=6000, seeds=2, overlaps=[0.0], overlap_n=4, overlap_K=3,
               overlap_T=200, record_every=100),
    "E3": dict(n=6, K=3, T=8, seeds=2, normalizers=["group_std", "none"], lrs=[1.0, 3.0],
               record_every=2),
    "E5b": dict(n=8, K=3, T=8, seeds=2, lags=[0, 2]),
}


class ReportParser(HTMLParser):
    """Collects, per <section id=...> (None: the summary table above them), its images
    (decoded) and table rows, each row a list of (cell text, cell class)."""

    def __init__(self):
        super().__init__()
        self.sections, self.current, self.cell = {None: {"images": [], "rows": []}}, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        sec = self.sections.get(self.current)
        if tag == "section":
            self.current = attrs["id"]
            self.sections[self.current] = {"images": [], "rows": []}
        elif tag == "img":
            src = attrs["src"]
            assert src.startswith("data:image/png;base64,")
            sec["images"].append(base64.b64decode(src.split(",", 1)[1]))
        elif tag == "tr":
            sec["rows"].append([])
        elif tag in ("td", "th"):
            self.cell = ["", attrs.get("class")]

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[0] += data

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None
        elif tag in ("td", "th"):
            self.sections[self.current]["rows"][-1].append(tuple(self.cell))
            self.cell = None


def _parse(path):
    p = ReportParser()
    p.feed(path.read_text())
    return p.sections


def _summary(report, eid):
    """The summary of ``eid`` the report was made from (its done.json)."""
    return json.loads((report.parent / eid / "done.json").read_text())["summary"]


ALL = ["E1", "E2", "E3", "E4", "E5", "E5b", "E6"]


def _tiny_lm(model_dir, cache):
    """Overrides that run E4-E6 on the tiny test model in seconds."""
    lm = dict(model=str(model_dir), cache_dir=str(cache), threads=1)
    return {
        "E4": dict(lm, task="arithmetic", level="add1", pool_size=12, n_pairs=6, batch_size=4),
        "E5": dict(lm, levels=["add1"], n_train=8, steps=2, diag_probe=2, diag_every=1,
                   lags=[0, 1], G=2, prompts_per_step=2, lora_r=2, lora_alpha=4.0,
                   max_new_tokens=4),
        "E6": dict(lm, levels=["add1", "mul1"], n_train=8, n_eval=2, steps=2, spread_n=2,
                   pass_rate_k=2, G=2, prompts_per_step=2, lora_r=2, lora_alpha=4.0,
                   max_new_tokens=4, eval_every=1, checkpoint_every=1),
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_policy_dir):
    out = tmp_path_factory.mktemp("rep")
    overrides = {**TINY, **_tiny_lm(tiny_policy_dir, out / "cache")}
    return rp.reproduce("quick", ALL, out, progress=False, overrides=overrides)


def test_every_section_has_a_table_and_nonblank_figures(report):
    sections = _parse(report)
    assert set(sections) == {None, *ALL}
    for eid in ALL:
        sec = sections[eid]
        assert len(sec["rows"]) >= 2, eid  # header + at least one paper-vs-ours row
        assert sec["images"], eid
        for png in sec["images"]:
            img = mpimg.imread(io.BytesIO(png), format="png")
            assert img.shape[0] > 100 and img.shape[1] > 100, eid
            assert img[..., :3].std() > 0.05, eid  # something is drawn
    md = report.with_suffix(".md").read_text()
    for eid in ALL:
        assert f"## {eid}:" in md
    body = md[md.index("## E1:"):]  # the sections (the summary may name an unanswered question)
    assert "not run" not in body and "could not summarize" not in md
    assert md.count("![") == sum(len(s["images"]) for s in sections.values())


def test_cells_show_the_summarys_numbers_and_verdicts(report):
    """Each row of E3 (Std - No-Std per optimizer and LR mode) shows its comparison's interval
    text and verdict from the summary, coloured by the verdict."""
    sections = _parse(report)
    s = _summary(report, "E3")
    rows = {r[0][0]: r for r in sections["E3"]["rows"][1:]}
    checked = 0
    for o, by_mode in s["comparisons"].items():
        for mode, by in by_mode.items():
            for part, (quantity, verdict) in {
                "hard": ("group_std − none, final mean π*, Hard", by["hard"]["verdict"]),
                "easy": ("group_std − none, final mean π*, Easy",
                         f"measured: {by['easy']['verdict']}"),
            }.items():
                (name,) = [q for q in rows if q.startswith(quantity)
                           and (("shared LR" in q) == (mode == "shared"))
                           and OPT_NAME.get(o, o) in q]
                (_, _), (_, _), (ours, _), (cell, cls) = rows[name]
                e = by[part]
                assert ours == e["text"], name
                # the difference in the cell is the summary's, to the digits shown
                shown = float(ours.split()[0].replace("\N{MINUS SIGN}", "-"))
                digits = len(ours.split()[0].split(".")[1])
                assert shown == pytest.approx(e["diff"], abs=0.6 * 10**-digits), name
                assert cell == verdict, name
                assert cls == VERDICT_CLASS[Verdict.of_cell(cell)], name
                checked += 1
    assert checked == 2 * sum(len(m) for m in s["comparisons"].values()) >= 2
    e1 = _summary(report, "E1")["checks"]
    for k, c in e1.items():  # E1: each bound's sharpest constant, and it holds
        row = {r[0][0]: r for r in sections["E1"]["rows"][1:]}[f"{k}: constant"]
        assert row[2][0] == f"sharpest {fmt(c['sharp_constant'], 4)}"
        assert row[3] == (("reproduced (bound holds)", "ok") if c["violations"] == 0
                          else (f"VIOLATED ({c['violations']} cases)", "bad"))


class _Section:
    def __init__(self, eid, rows):
        self.eid, self.title, self.paper, self.rows = eid, f"title {eid}", f"paper {eid}", rows


def _write(tmp_path, sections, records):
    meta = {"profile": "quick", "date": "2026-01-01", "wall_time_s": 1.0, "command": "c",
            "environment": {"python": "3"}}
    return render.write_report(tmp_path, sections, records, meta)


def _done(summary):
    return {"status": "done", "summary": {"run_dir": "", "figures": [], **summary},
            "config": {}, "wall_time_s": 0.1}


def test_verdict_cells_are_coloured_by_their_verdict(tmp_path):
    cells = {  # cell -> class; a word inside the text does not decide it, the verdict does
        "reproduced (bound holds)": "ok",
        "measured: contradicted": "ok",
        "measured: inconclusive (3 seeds)": "ok",
        "contradicted (lagged correlation ≠ 0)": "bad",
        "inconclusive (≈14 seeds would resolve 0.05)": "neutral",
        "no clear difference": "neutral",
        "differs (mean +0.051, 40% below 0.1)": "bad",
        "VIOLATED (3 cases)": "bad",
        "positive": "ok",
        "Std behind here": "ok",  # rl_compare's direction in a pass-rate bin (negative)
    }
    typed = [VerdictCell("Std is ahead, reproduced elsewhere", Verdict.REPRODUCED),
             Verdict.CONTRADICTED]
    rows = [[f"q{i}", "p", str(i), c] for i, c in enumerate([*cells, *typed])]
    missing = _Section("E8", lambda s: [])
    path = _write(tmp_path, [_Section("E7", lambda s: rows), missing],
                  [_done({}), {"status": "unavailable", "reason": "No module named 'x'"}])
    sections = _parse(path)
    got = [r[3] for r in sections["E7"]["rows"][1:]]
    assert got == [*cells.items(), ("Std is ahead, reproduced elsewhere", "ok"),
                   ("contradicted", "bad")]
    assert [r[2][0] for r in sections["E7"]["rows"][1:]] == [str(i) for i in range(len(rows))]
    # the verdict summary: each verdict counted over every row, in its colour; the headline
    # questions no row answers say so
    heads, counts = _summary_tables(path)
    expected = Counter(r[-1].verdict for r in render._typed(rows))
    expected[Verdict.NOT_RUN] += 1  # E8
    assert {Verdict(v[0]): int(n[0]) for v, n, _ in counts} == expected
    assert all(v[1] == VERDICT_CLASS[Verdict(v[0])] for v, _, _ in counts)
    assert len(heads) == len(render.HEADLINES)
    assert all(r[-1] == ("not run: no row answers it", "bad") for r in heads)


def _summary_tables(path):
    """The verdict summary's two tables (rows without their header): headlines, counts."""
    rows = _parse(path)[None]["rows"]
    heads_end = next(i for i, r in enumerate(rows) if i and r[0][0] == "verdict")
    return rows[1:heads_end], rows[heads_end + 1:]


def test_the_report_opens_with_the_headline_answers(report):
    """Headlines: each question's rows are the very rows of the sections they name (here E3's
    tuned-LR and curvature-power rows), and the counts add up to every row of the report."""
    sections = _parse(report)
    heads, counts = _summary_tables(report)
    text = report.read_text()
    assert text.index("Verdict summary") < text.index("<section")
    questions = [r[0][0] for r in heads if r[0][0]]
    assert questions == [q for q, _ in render.HEADLINES]
    found = [r for r in heads if r[1][0] == "E3"]
    assert found
    e3 = {r[0][0]: r for r in sections["E3"]["rows"][1:]}
    for r in found:
        assert r[2][0] in e3 and r[3:] == e3[r[2][0]][2:]  # ours, verdict, class
    total = sum(len(sec["rows"]) - 1 for k, sec in sections.items() if k is not None)
    assert sum(int(n[0]) for _, n, _ in counts) == total


def test_a_summary_it_cannot_read_names_the_error_and_the_file(tmp_path, capsys):
    path = _write(tmp_path, [_Section("E7", lambda s: [["q", "p", s["missing"], "reproduced"]]),
                             _Section("E8", lambda s: [["q", "p", "1", "roughly right"]])],
                  [_done({}), _done({})])
    rows = _parse(path)
    (_, _, _, (cell, cls)), = rows["E7"]["rows"][1:]
    assert cell == (f"could not summarize (E7, {tmp_path / 'E7' / 'done.json'}): "
                    "KeyError: 'missing'") and cls == "bad"
    (_, _, _, (cell, cls)), = rows["E8"]["rows"][1:]
    assert cell.startswith("could not summarize (E8, ") and "ValueError: verdict cell " \
        "'roughly right' starts with none of the verdicts" in cell and cls == "bad"
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'missing'" in err and "E7" in err


def test_an_unexpected_error_is_not_hidden(tmp_path):
    def broken(s):
        raise RuntimeError("a bug in report_rows")

    with pytest.raises(RuntimeError, match="a bug in report_rows"):
        _write(tmp_path, [_Section("E7", broken)], [_done({})])


def test_markdown_figure_links_survive_moving_the_folder(report, tmp_path):
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report.with_suffix(".md").read_text())
    assert links and not any(Path(x).is_absolute() for x in links)
    moved = tmp_path / "moved"
    shutil.copytree(report.parent, moved)  # the run folders live inside the report folder
    for link in links:
        assert (moved / link).is_file(), link


def test_rerun_skips_finished_experiments(report):
    before = (report.parent / "E1" / "done.json").stat().st_mtime
    full = report.read_text()
    try:
        rp.reproduce("quick", ["E1"], report.parent.parent, progress=False, overrides=TINY)
        assert (report.parent / "E1" / "done.json").stat().st_mtime == before
        assert "reused from an earlier run" in report.read_text()
    finally:  # the other tests read the report of every experiment
        report.write_text(full)


def test_unavailable_experiment_is_reported_not_hidden(tmp_path, monkeypatch):
    from grponorm.experiments import registry

    missing = registry.Experiment("diag", "missing", "grponorm.experiments.does_not_exist",
                                  "Cfg", "a missing experiment", "E9")
    monkeypatch.setattr(registry, "EXPERIMENTS", [*registry.EXPERIMENTS, missing])
    path = rp.reproduce("quick", ["E9"], tmp_path, progress=False)
    assert "not run: No module named" in path.read_text()


def test_bad_arguments():
    with pytest.raises(ValueError, match="profile"):
        rp.reproduce("huge")
    with pytest.raises(ValueError, match="unknown experiment"):
        rp.reproduce("quick", ["E42"])


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
#: Appended to a copy of the report: once the page has loaded, what the browser made of it.
PROBE = """<script>
window.addEventListener("load", () => {
  const style = (td) => { const cs = getComputedStyle(td); return [cs.color, cs.fontWeight]; };
  const probe = {
    sections: [...document.querySelectorAll("section")].map((sec) => [sec.id,
      [...sec.querySelectorAll("tr")].map((tr) => [...tr.cells].map((c) => c.innerText))]),
    verdicts: [...document.querySelectorAll("td[class]")].map(
      (td) => [td.innerText, td.className, ...style(td)]),
    images: [...document.images].map((i) => [i.complete, i.naturalWidth, i.naturalHeight]),
    // layout: each section's rows table and its first figure, as laid out on the page
    pairs: [...document.querySelectorAll("section")].map((sec) => {
      const t = sec.querySelector(".pair .rows table"), f = sec.querySelector(".pair .figs img");
      const r = (e) => {
        const b = e.getBoundingClientRect();
        return [b.left, b.top, b.right, b.bottom];
      };
      return [sec.id, t ? r(t) : null, f ? r(f) : null];
    }),
    first: [...document.querySelectorAll("h2")].map((h) => h.innerText)[0],
    summaryTop: document.getElementById("headlines").getBoundingClientRect().top,
    firstSectionTop: document.querySelector("section").getBoundingClientRect().top,
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(probe);
  document.body.appendChild(pre);
});
</script>"""
COLOUR = {"ok": ("rgb(10, 125, 40)", "400"), "bad": ("rgb(176, 0, 32)", "700"),
          "neutral": ("rgb(102, 102, 102)", "400")}  # render.CSS


@pytest.fixture
def chromium():
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("GRPONORM_REQUIRE_CHROMIUM"):
            pytest.fail("GRPONORM_REQUIRE_CHROMIUM is set but chromium is not on PATH "
                        "(apt-get install chromium)")
        pytest.skip("headless Chromium not installed")
    return exe


def _browse(exe, profile, *args):
    proc = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_report_renders_in_headless_chromium(report, tmp_path, chromium):
    page = tmp_path / "probed.html"
    page.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    dom = _browse(chromium, tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom",
                  "--window-size=1500,2000", page.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    probe = json.loads(html.unescape(found.group(1)))

    # figures: every embedded PNG decoded, at the size of the PNG the report embedded
    pngs = [png for sec in _parse(report).values() for png in sec["images"]]
    assert len(probe["images"]) == len(pngs) > 0
    for (complete, width, height), png in zip(probe["images"], pngs):
        shape = mpimg.imread(io.BytesIO(png), format="png").shape
        assert complete and (height, width) == shape[:2] and width > 100

    # verdict cells: the colour of their verdict, as the browser computed it
    assert len(probe["verdicts"]) >= len(ALL)
    for text, cls, colour, weight in probe["verdicts"]:
        assert cls == VERDICT_CLASS[Verdict.of_cell(text)], text
        assert (colour, weight) == COLOUR[cls], text
    assert {"ok", "neutral"} <= {cls for _, cls, _, _ in probe["verdicts"]}

    # a number from a summary, in its row's "ours" cell as rendered
    sections = dict(probe["sections"])
    assert list(sections) == ALL
    for k, c in _summary(report, "E1")["checks"].items():
        (row,) = [r for r in sections["E1"] if r[0] == f"{k}: constant"]
        assert row[2] == f"sharpest {fmt(c['sharp_constant'], 4)}" and row[1] == fmt(
            c["paper_constant"])
    hard = _summary(report, "E3")["comparisons"]
    texts = {by["hard"]["text"] for by_mode in hard.values() for by in by_mode.values()}
    shown = {r[2] for r in sections["E3"] if r[0].startswith("group_std − none, final mean "
                                                             "π*, Hard")}
    assert texts == shown and texts

    # layout: the verdict summary opens the page; in every section the figure stands beside
    # its rows (to the right of the table, starting level with it), not below them
    assert probe["first"] == "Verdict summary"
    assert probe["summaryTop"] < probe["firstSectionTop"]
    pairs = {sid: (t, f) for sid, t, f in probe["pairs"]}
    assert set(pairs) == set(ALL)
    for sid, (table, fig) in pairs.items():
        assert table and fig, sid
        assert fig[0] >= table[2] - 1, (sid, table, fig)  # left edge right of the table
        assert fig[1] < table[3], (sid, table, fig)  # starts before the table ends

    shot = tmp_path / "shot.png"
    _browse(chromium, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1200,2400",
            report.as_uri())
    img = mpimg.imread(shot)
    assert img.shape[:2] == (2400, 1200)
    # the page is laid out: text and figures cover a real share of the screenshot
    assert (img[..., :3].mean(axis=-1) < 0.9).mean() > 0.02


def test_report_rebuilt_from_committed_results(tmp_path):
    """``reproduce --from-results``: the rows come from the committed summary, nothing runs;
    an experiment missing from the results is shown as not run."""
    from grponorm.experiments import bandit_sampled
    from grponorm.report.reproduce import RESULTS, rebuild

    cfg = bandit_sampled.SampledConfig(n=6, K=4, T=5, seeds=2, normalizers=["group_std", "none"],
                                       lrs=[1.0], out=str(tmp_path / "runs"))
    summary = bandit_sampled.run(cfg, progress=False)
    folder = tmp_path / "results" / RESULTS["E3"]
    shutil.copytree(summary["run_dir"], folder)
    html_path = rebuild(tmp_path / "results", tmp_path / "report", progress=False)
    md = html_path.with_suffix(".md").read_text()
    expected = bandit_sampled.report_rows(summary)
    assert expected and all(row[2] in md for row in expected)  # E3's numbers, as summarized
    assert "E6: " in md and "not run: " in md  # E5, E6 are not in these results
    assert (folder / "summary.json").read_text() == (
        Path(summary["run_dir"]) / "summary.json").read_text()  # read, not rewritten
