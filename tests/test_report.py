"""`grponorm reproduce` renders a report whose every section has its table and real figures."""

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from grponorm.report import reproduce as rp

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
    """Collects, per <section id=...>, its images (decoded) and table rows."""

    def __init__(self):
        super().__init__()
        self.sections, self.current, self.rows, self.in_row = {}, None, {}, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.current = attrs["id"]
            self.sections[self.current] = {"images": [], "rows": 0}
        elif tag == "img" and self.current:
            src = attrs["src"]
            assert src.startswith("data:image/png;base64,")
            self.sections[self.current]["images"].append(base64.b64decode(src.split(",", 1)[1]))
        elif tag == "tr" and self.current:
            self.sections[self.current]["rows"] += 1

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None


def _parse(path):
    p = ReportParser()
    p.feed(path.read_text())
    return p.sections


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
    assert set(sections) == set(ALL)
    for eid, sec in sections.items():
        assert sec["rows"] >= 2, eid  # header + at least one paper-vs-ours row
        assert sec["images"], eid
        for png in sec["images"]:
            img = mpimg.imread(io.BytesIO(png), format="png")
            assert img.shape[0] > 100 and img.shape[1] > 100, eid
            assert img[..., :3].std() > 0.05, eid  # something is drawn
    md = report.with_suffix(".md").read_text()
    for eid in ALL:
        assert f"## {eid}:" in md
    assert "not run" not in md and "could not summarize" not in md
    assert md.count("![") == sum(len(s["images"]) for s in sections.values())


def test_markdown_figure_links_survive_moving_the_folder(report, tmp_path):
    import re

    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report.with_suffix(".md").read_text())
    assert links and not any(Path(x).is_absolute() for x in links)
    moved = tmp_path / "moved"
    shutil.copytree(report.parent, moved)  # the run folders live inside the report folder
    for link in links:
        assert (moved / link).is_file(), link


def test_rerun_skips_finished_experiments(report):
    before = (report.parent / "E1" / "done.json").stat().st_mtime
    rp.reproduce("quick", ["E1"], report.parent.parent, progress=False, overrides=TINY)
    assert (report.parent / "E1" / "done.json").stat().st_mtime == before
    assert "reused from an earlier run" in report.read_text()


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


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1200,2400", report.as_uri()],
        check=True, capture_output=True, timeout=120)
    img = mpimg.imread(shot)
    assert img.shape[:2] == (2400, 1200)
    # the page is laid out: text and figures cover a real share of the screenshot
    assert (img[..., :3].mean(axis=-1) < 0.9).mean() > 0.02
