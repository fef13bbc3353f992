"""The report in a real headless Chromium (Debian's ``chromium``, driven by Playwright): loads
without console errors, every image renders, and the chooser switches the shown training points.

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (Playwright's own browser
download is not used: the Debian binary is passed as ``executable_path``). Where either is missing
the test is skipped with the reason, and a warning says so in the summary.
"""

from __future__ import annotations

import os
import shutil
import warnings

import pytest

from whybox import report

from _report_data import digits_17_study, iris_study


def _chromium() -> str:
    for candidate in (os.environ.get("WHYBOX_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return ""


def _skip(reason: str) -> None:
    warnings.warn(f"browser test skipped: {reason}", UserWarning)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip("playwright is not installed (pip install playwright)")
    exe = _chromium()
    if not exe:
        _skip("no chromium binary on PATH (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module", params=["images", "table"])
def page_file(request, tmp_path_factory):
    study = digits_17_study() if request.param == "images" else iris_study()
    data = report.build_report(study, n_test=3, top_k=3, self_k=4, validate=3 if request.param == "images" else 0,
                               progress=False)
    path = tmp_path_factory.mktemp("browser") / "report.html"
    report.write_report(path, data)
    return path, data


def _visible_train_indices(page):
    return page.eval_on_selector_all(
        "section.test:not([hidden]) .card", "els => els.map(e => parseInt(e.dataset.trainIndex))"
    )


def test_report_in_headless_chromium(browser, page_file):
    path, data = page_file
    page = browser.new_page()
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    assert problems == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests  # no network
    # every image decoded with a real size
    sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
    assert sizes and all(c and w > 0 and h > 0 for c, w, h in sizes), sizes
    # exactly one test point shown, with the training points the API ranked for it
    assert page.locator("section.test:not([hidden])").count() == 1
    first = [c.index for c in data.tests[0].helpful + data.tests[0].harmful]
    assert _visible_train_indices(page) == first
    # the chooser switches to another test point without reloading
    page.select_option("#chooser", "2")
    third = [c.index for c in data.tests[2].helpful + data.tests[2].harmful]
    assert _visible_train_indices(page) == third != first
    assert page.locator("section.test:not([hidden])").get_attribute("data-test-index") == str(data.tests[2].index)
    page.click("#next")  # wraps around to the first
    assert _visible_train_indices(page) == first
    page.click("#prev")
    assert page.input_value("#chooser") == "2"
    visible_imgs = page.eval_on_selector_all(
        "section.test:not([hidden]) img", "els => els.map(e => e.getBoundingClientRect().width)")
    assert all(w > 0 for w in visible_imgs)
    assert problems == []
    page.close()
