"""The page at ``/`` in a real headless Chromium against a real uvicorn server: upload, bars, heatmap."""

from __future__ import annotations

import shutil

import pytest

from cxrlab.serve import create_app
from tests.evaluate.test_report_browser import CHROMIUM_ARGS
from tests.serve.conftest import live_server

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (make browser)")]


@pytest.fixture(scope="module")
def server(run_dir):
    with live_server(create_app(run_dir)) as url:
        yield url


def test_a_person_uploads_an_image_and_sees_bars_and_a_heatmap(server, phantoms, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    image = next((phantoms.parent / "images").glob("*.png"))
    (tmp_path / "notes.txt").write_text("not an image")
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server)
        expect(page.locator("#card")).to_contain_text("efficientnet_lite0")
        page.set_input_files("#file", str(image))
        expect(page.locator("#result")).to_have_class("shown", timeout=30_000)
        bars = page.locator(".bar-row")
        expect(bars).to_have_count(3)
        shown = [float(v) for v in page.locator(".bar-value").all_inner_texts()]
        assert abs(sum(shown) - 1) < 0.01
        widths = page.eval_on_selector_all(".bar", "bars => bars.map(b => b.getBoundingClientRect().width)")
        track = page.eval_on_selector(".bar-track", "t => t.getBoundingClientRect().width")
        assert [round(w / track, 2) for w in widths] == pytest.approx(shown, abs=0.02)  # bars drawn to scale
        assert page.locator("#predicted").inner_text().removeprefix("predicted: ") in {"COVID-19", "Pneumonia", "Normal"}
        size = page.eval_on_selector("#overlay", "img => [img.complete, img.naturalWidth, img.naturalHeight]")
        assert size[0] and size[1] >= 64 and size[2] >= 64  # the heatmap overlay decoded
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        page.set_input_files("#file", str(tmp_path / "notes.txt"))
        expect(page.locator("#error")).to_contain_text("415")
        browser.close()
    assert errors == []
