"""The drag canvas as a person uses it, in Debian's Chromium (headless, Playwright), with the tiny model.

Upload, lasso a region, drag it by (+40, +10) px, turn it 15 degrees by its round grip, release: with
auto-run on, the result appears without pressing anything. The export holds that transform; the CLI
gives the identical image from it; the browser's live preview equals the library's pixel preview; a
burst of 20 drags runs at most 3 edits and shows the last one's. Screenshots go to the test's folder
(REGIONDRAG_UI_SCREENSHOTS=folder copies them there).
"""
import base64
import io
import json
import math
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from test_ui_browser import CHELSEA, ROOT, offline_page, server_url, wait_for_text  # noqa: F401

from regiondrag.apps.region_file import regions_from_json
from regiondrag.pipeline import RegionDragPipeline


def to_screen(page, x: float, y: float) -> tuple[float, float]:
    """Screen position of photo pixel (x, y) on the drag canvas."""
    box = page.locator("#canvas canvas.rd-view").bounding_box()
    w, h = Image.open(CHELSEA).size
    return box["x"] + x * box["width"] / w, box["y"] + y * box["height"] / h


def drag(page, path, steps: int = 4) -> None:
    """Press at path[0], move through the rest (photo pixels), release."""
    page.mouse.move(*to_screen(page, *path[0]))
    page.mouse.down()
    for p in path[1:]:
        page.mouse.move(*to_screen(page, *p), steps=steps)
    page.mouse.up()


BURST_JS = """([drags, size]) => {
    const c = document.querySelector('#canvas canvas.rd-view'), b = c.getBoundingClientRect();
    const at = (type, [x, y]) => c.dispatchEvent(new PointerEvent(type, {bubbles: true, button: 0, buttons: 1,
        clientX: b.left + x * b.width / size[0], clientY: b.top + y * b.height / size[1]}));
    for (const [from, to] of drags) { at('pointerdown', from); at('pointermove', to); at('pointerup', to); }
}"""


def burst(page, drags) -> None:
    """Drags (from, to) in photo pixels, scripted in the page one right after another (each a release)."""
    page.evaluate(BURST_JS, [drags, list(Image.open(CHELSEA).size)])


def canvas_api(page, call: str):
    return page.evaluate(f"() => document.querySelector('#canvas canvas.rd-view').regiondrag.{call}")


def data_url_image(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def wait_for_result(page, seq: int) -> str:
    """The result <img> of request `seq` (the page shows only its latest request's)."""
    page.wait_for_function("s => { const i = document.querySelector('#canvas img.rd-result');"
                           " return i && i.dataset.seq === String(s) && i.complete && i.naturalWidth > 0; }",
                           arg=seq, timeout=240_000)
    return page.locator("#canvas img.rd-result").get_attribute("src")


@pytest.mark.slow  # a minute or two (a subprocess server, software-rendered canvas): CI runs it with -m slow
def test_drag_a_region_with_the_mouse_and_the_edit_follows(server_url, tiny_sd_folder, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"screenshots: {shots}")
    with offline_page(server_url, 1700, shots) as page:
        page.goto(server_url)
        page.locator("#photo input[type=file]").set_input_files(str(CHELSEA))
        wait_for_text(page, "#inversion", r"Inversion ready", timeout_s=120)  # inverted ahead, on upload
        page.wait_for_function("() => document.querySelector('#canvas canvas.rd-view').width > 1")
        page.locator("#auto-run input").check()
        page.screenshot(path=shots / "1_uploaded.png", full_page=True)

        # lasso round the cat's left eye (a closed outline of 24 points)
        lasso = [(190 + 35 * math.cos(a), 135 + 28 * math.sin(a)) for a in np.linspace(0, 2 * np.pi, 24)]
        drag(page, lasso, steps=2)
        assert canvas_api(page, "regions().length") == 1
        outline = np.array(canvas_api(page, "regions()[0].outline"), float)
        page.screenshot(path=shots / "2_lassoed.png", full_page=True)

        # move it by (+40, +10), then turn it by 15 degrees with the round grip
        drag(page, [(190, 135), (210, 140), (230, 145)])
        grips = canvas_api(page, "grips()")
        (cx, cy), (gx, gy) = grips["centre"], grips["rotate"]
        radius, start = math.hypot(gx - cx, gy - cy), math.atan2(gy - cy, gx - cx)
        arc = [(cx + radius * math.cos(start + math.radians(d)), cy + radius * math.sin(start + math.radians(d)))
               for d in range(0, 16, 3)]
        drag(page, arc, steps=2)
        page.screenshot(path=shots / "3_dragged.png", full_page=True)
        seq = canvas_api(page, "seq()")
        result = data_url_image(wait_for_result(page, seq))  # no button pressed: auto-run on release
        assert result.shape == (300, 451, 3)
        page.screenshot(path=shots / "4_result.png", full_page=True)

        # the browser's live preview = the library's pixel copy-paste preview of the same transform
        matrix = np.array(canvas_api(page, "regions()[0].matrix"), float)
        photo = Image.open(CHELSEA).convert("RGB")
        browser_preview = data_url_image(canvas_api(page, "previewPNG()"))

        # the export holds that transform; the CLI edits it into the identical image
        page.locator("#export").click()
        link = page.locator("a[href*='regiondrag_regions.zip']").first
        link.wait_for(timeout=60_000)
        zipped = page.request.get(link.get_attribute("href")).body()
        folder = tmp_path / "export"
        zipfile.ZipFile(io.BytesIO(zipped)).extractall(folder)
        doc = json.loads((folder / "regions.json").read_text())
        (pair,) = doc["pairs"]
        assert pair["kind"] == "transform"
        m = np.array(pair["matrix"], float)[:2]
        assert np.allclose(m, matrix[:2])
        centre = (outline.min(0) + outline.max(0)) / 2
        moved = m @ np.append(centre, 1)
        assert np.abs(moved - centre - [40, 10]).max() <= 1, moved - centre
        assert abs(math.degrees(math.atan2(m[1, 0], m[0, 0])) - 15) <= 1, m
        (region,) = regions_from_json(folder / "regions.json", photo.size)
        library = np.asarray(RegionDragPipeline.preview(photo, [region], photo.size, None))
        close = (np.abs(library.astype(int) - browser_preview.astype(int)) <= 1).mean()
        assert close >= 0.99, close
        out = tmp_path / "cli.png"
        subprocess.run([sys.executable, "-m", "regiondrag", "edit", "--image", str(folder / "photo.png"),
                        "--regions", str(folder / "regions.json"), "--out", str(out), "--weights",
                        str(tiny_sd_folder), "--device", "cpu", "--dtype", "fp32", "--max-side", "128",
                        "--quiet"], cwd=ROOT, check=True)
        assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), result)

        # a burst of 20 drags: at most 3 edits run (a queued one is replaced), the last one's is shown
        before = canvas_api(page, "replies()")
        burst(page, [((moved[0] + 3 * (i % 2), moved[1]), (moved[0] + 3 * (1 - i % 2), moved[1] + 1))
                     for i in range(20)])
        seq = canvas_api(page, "seq()")
        wait_for_result(page, seq)
        page.wait_for_timeout(1000)  # anything still running would have answered by now
        runs = canvas_api(page, "replies()") - before
        assert 1 <= runs <= 3, runs
        page.screenshot(path=shots / "5_burst.png", full_page=True)
