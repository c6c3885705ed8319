"""The demo's own run: what ``python cli.py demo`` runs (cv on the bundled photos, with
the fine-tuning run, feature hierarchy and explorer grid), judged, then its report opened
in headless Chromium.

One module, so the demo runs once per session: ``--dist loadfile`` (setup.cfg) keeps a
module on one pytest-xdist worker, and tests/conftest.py schedules this one first.
"""

from __future__ import annotations

import base64

import pytest
from test_report_browser import (
    ARTIFACTS,
    EXPLORER_CHECK,
    SECTION_CHECK,
    SECTIONS,
    check_cam_thumbnails,
    chromium_session,
    find_chromium,
    load,
    problems,
)

from pipeline.workflows.demo import summary_rows


@pytest.fixture(scope="module")
def chromium():
    return find_chromium()


@pytest.fixture(scope="module")
def cv_demo(tmp_path_factory):
    """One run of what ``python cli.py demo`` runs, shared by the tests of this module, on
    every core: under pytest-xdist the other workers' torch has one thread each and waits
    passively (tests/conftest.py), so the demo is not starved while they run and has the
    machine to itself once they are done."""
    import torch

    from pipeline.parallel import cores
    from pipeline.workflows.demo import run_demo

    root = tmp_path_factory.mktemp("cv-demo")
    threads = torch.get_num_threads()
    torch.set_num_threads(cores())  # the suite's longest setup may use every core
    try:
        return run_demo(out_dir=root / "demo", features_dir=root / "features", progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_demo_cross_validates_and_finds_frozen_features_significantly_better(cv_demo):
    """The demo's default on 150 photos is cv: every method on the same 15 folds of all
    images, and the verdict's corrected t-test (Holm) separates the best frozen head from
    raw pixels and from the scratch CNN."""
    from pipeline.reporting.sections import verdict_section
    from pipeline.runs.groups import group_runs

    result = cv_demo
    records = result["records"]
    assert {r["protocol"] for r in records} == {"cv"}
    assert "auto" in records[0]["protocol_reason"]
    assert {len(r["predictions"]["y_true"]) for r in records} == {150}
    assert len({tuple(map(tuple, r["cv"]["fold_ids"])) for r in records}) == 1   # same folds
    verdict = verdict_section(group_runs(records))
    assert verdict["best"]["kind"] in ("frozen", "finetune"), summary_rows(records)
    by_method = {c["group"]["method"]: c for c in verdict["comparisons"]}
    for method in ("pixels", "cnn"):
        assert by_method[method]["test"]["test"] == "corrected-t"
        assert by_method[method]["p_holm"] < 0.05, (method, by_method[method])
    html = result["report"].read_text()
    assert "Nadeau-Bengio" in html and "cross-validated accuracy" in html
    _assert_the_four_insight_sections(html, result["folder"] / "runs")


def _assert_the_four_insight_sections(html: str, runs):
    """The demo's report shows the feature hierarchy, the fine-tuning run's augmentation
    preview, the transfer explorer and the leakage check, each from its real record."""
    import re

    from pipeline.configs import DEFAULT_DEPTHS
    from pipeline.workflows.explore import latest_explore

    def section(name):
        return re.search(rf'<section id="{name}".*?</section>', html, re.S).group(0)

    assert section("hierarchy").count('<img src="data:image/') >= 4      # a grid per tap
    assert 'alt="training augmentation of fine-tune top group"' in section("curves")
    explorer = section("explore")
    record = latest_explore(runs)
    assert record["complete"] and record["grid"]["depths"] == list(DEFAULT_DEPTHS)
    assert f"{len(record['cells'])} fine-tuning runs" in explorer
    assert 'id="explore-chart"' in explorer and "McNemar" in explorer
    assert "near-duplicate" in section("leakage")
    assert len(html.encode()) < 5_000_000


@pytest.mark.slow
def test_demo_report_and_its_explorer_in_chromium(chromium, cv_demo, tmp_path):
    """The report of `python cli.py demo` itself: every section, the feature hierarchy,
    augmentation preview, explorer and leakage sections drawn from real records; both
    explorer controls redraw the chart; no console error; the page stays under 5 MB."""
    page = cv_demo["report"]
    assert page.stat().st_size < 5_000_000
    with chromium_session(chromium, tmp_path) as dev:
        load(dev, page)
        state = dev.evaluate(SECTION_CHECK)
        for name in (*SECTIONS, "leakage", "hierarchy"):
            assert state["sections"][name]["visible"], f"section {name} not visible"
        assert state["images"] and all(i["ok"] for i in state["images"]), \
            [i["alt"] for i in state["images"] if not i["ok"]]
        explorer = dev.evaluate(EXPLORER_CHECK)
        assert explorer["bars"] == [4, 4], explorer       # accuracy and time, one per depth
        assert explorer["sizes"] == ["5", "all"]
        assert explorer["afterSize"] != explorer["before"], "changing the size did not redraw"
        # the demo's grid has one rate: the rate control is driven on a two-rate grid in
        # tests/test_report_browser.py::test_report_in_headless_chromium
        assert explorer["heights"] != explorer["heightsAfter"]
        assert "lr 0.003" in explorer["caption"], explorer["caption"]
        # where the best frozen head and the fine-tuned network look, beside each mistake
        check_cam_thumbnails(dev, ["frozen", "fine-tuned"], "report-mistakes-cam.png")
        dev.pump(0.5)
        assert problems(dev, page) == []
        ARTIFACTS.mkdir(exist_ok=True)
        full = dev.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": 1366, "height": state["height"],
                              "scale": 0.5})
        (ARTIFACTS / "demo-report-full.png").write_bytes(base64.b64decode(full["data"]))
        dev.evaluate("document.getElementById('explore').scrollIntoView()")
        shot = dev.call("Page.captureScreenshot", format="png")
        (ARTIFACTS / "demo-explorer.png").write_bytes(base64.b64decode(shot["data"]))
