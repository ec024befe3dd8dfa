"""The browser editor as a person uses it: Debian's Chromium (headless, driven by Playwright) on the
page that `python -m regiondrag ui` serves, with the tiny random-weight model.

Upload a photo, paint a handle and a target region with mouse strokes, add the pair, click a
polygon pair on the preview, press Drag, and wait for a result of the photo's size. Screenshots of
each stage go to the test's temporary folder (the path is printed).
"""
import os
import re
import shutil
import socket
from contextlib import contextmanager
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
CHELSEA = ROOT / "examples" / "chelsea.png"  # 451 x 300
CHROMIUM = "/usr/bin/chromium"
# headless, and nothing that calls home: the test must pass offline
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

playwright = pytest.importorskip("playwright.sync_api", reason="the test extra installs playwright")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}; .ci/run installs Debian's chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def server_url(tiny_sd_folder, tmp_path_factory):
    """`python -m regiondrag ui` in a subprocess, as the README starts it."""
    port = free_port()
    log = tmp_path_factory.mktemp("ui_server") / "server.log"
    with open(log, "w") as out:
        # --live-max-s: the tiny model's re-edits take 0.1-0.3 s on a loaded 2-core CPU; live mode on by default
        proc = subprocess.Popen([sys.executable, "-m", "regiondrag", "ui", "--weights", str(tiny_sd_folder),
                                 "--device", "cpu", "--dtype", "fp32", "--port", str(port), "--max-side", "128",
                                 "--live-max-s", "60"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the ui server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def editor_points(page, elem_id: str, points) -> list[tuple[float, float]]:
    """Screen positions of photo pixels on an ImageEditor: the photo sits centred in its canvas,
    scaled by the zoom the editor shows."""
    editor = page.locator(f"#{elem_id}")
    zoom = float(re.search(r"(\d+)%", editor.inner_text()).group(1)) / 100
    box = editor.locator("canvas").first.bounding_box()
    width, height = Image.open(CHELSEA).size
    return [(box["x"] + box["width"] / 2 + (x - width / 2) * zoom,
             box["y"] + box["height"] / 2 + (y - height / 2) * zoom) for x, y in points]


def image_point(page, elem_id: str, x: float, y: float) -> tuple[float, float]:
    """Screen position of pixel (x, y) of the image shown in a gr.Image (contained in its box)."""
    # one read of the box and the image's size: the preview image is replaced after every click
    left, top, width, height, nw, nh = page.wait_for_function("""id => {
        const i = document.querySelector(`#${id} img`);
        if (!i || !i.complete || !i.naturalWidth) return null;
        const r = i.getBoundingClientRect();
        return [r.x, r.y, r.width, r.height, i.naturalWidth, i.naturalHeight];
    }""", arg=elem_id).json_value()
    scale = min(width / nw, height / nh)
    return left + (width - nw * scale) / 2 + (x + 0.5) * scale, top + (height - nh * scale) / 2 + (y + 0.5) * scale


def click_preview(page, x: float, y: float, n: int) -> None:
    """Click pixel (x, y) of the preview as the n-th point, then wait, as a person would, until it shows
    in the boxes and the preview has been redrawn with it (a click while the image is swapped is lost)."""
    before = page.locator("#preview img").first.get_attribute("src")
    page.mouse.click(*image_point(page, "preview", x, y))
    page.wait_for_function("""n => ['handle', 'target'].map(side => document.querySelector(`#${side}-text textarea`)
        .value.split(';').filter(p => p.trim()).length).reduce((a, b) => a + b) === n""", arg=n, timeout=30_000)
    page.wait_for_function("""src => { const i = document.querySelector('#preview img');
        return i && i.getAttribute('src') !== src && i.complete && i.naturalWidth > 0; }""", arg=before,
                           timeout=30_000)


def paint(page, elem_id: str, points) -> None:
    """One mouse stroke through photo pixels `points`, zigzagging so that it fills an area."""
    first, *rest = editor_points(page, elem_id, points)
    page.mouse.move(*first)
    page.mouse.down()
    for p in rest:
        page.mouse.move(*p, steps=2)
    page.mouse.up()


def zigzag(x0, y0, x1, y1, step=15):
    return [(x0 if i % 2 == 0 else x1, y) for i, y in enumerate(range(y0, y1 + 1, step))]


def wait_for_text(page, selector: str, pattern: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = page.locator(selector).inner_text()
        if re.search(pattern, text):
            return text
        page.wait_for_timeout(200)
    pytest.fail(f"{selector} never showed {pattern!r}; it shows {text!r}")


@contextmanager
def offline_page(server_url: str, height: int, shots: Path):
    """A headless Chromium page; on leaving, checks it asked nothing of anywhere but the server (the page must
    work offline: no asset fetched from the internet), and copies the screenshots in `shots` to
    $REGIONDRAG_UI_SCREENSHOTS if set (for a look, pass or fail)."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            elsewhere = []
            page.on("request", lambda r: r.url.startswith((server_url, "data:", "blob:")) or elsewhere.append(r.url))
            yield page
            assert elsewhere == []
        finally:
            browser.close()
            if os.environ.get("REGIONDRAG_UI_SCREENSHOTS"):
                shutil.copytree(shots, os.environ["REGIONDRAG_UI_SCREENSHOTS"], dirs_exist_ok=True)


@pytest.mark.slow  # about a minute (software-rendered canvas, a subprocess server): CI runs it with -m slow
def test_draw_and_drag_in_chromium(server_url, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"screenshots: {shots}")
    with offline_page(server_url, 2400, shots) as page:  # the drag canvas sits above the tabs
        page.goto(server_url)
        page.locator("#photo input[type=file]").set_input_files(str(CHELSEA))
        wait_for_text(page, "#status", r"Photo 451x300")
        wait_for_text(page, "#inversion", r"Inversion ready \(\d", timeout_s=120)  # run on upload
        page.locator("#handle-editor canvas").first.wait_for()
        page.wait_for_timeout(500)  # the canvases draw the photo
        page.screenshot(path=shots / "1_uploaded.png", full_page=True)

        # brush masks: paint the handle (the cat's left eye) and a target to its right
        paint(page, "handle-editor", zigzag(150, 110, 220, 170))
        paint(page, "target-editor", zigzag(250, 120, 320, 180))
        page.screenshot(path=shots / "2_painted.png", full_page=True)
        page.locator("#add-masks").click()
        summary = wait_for_text(page, "#summary", r"1\. brush masks")
        cells = int(re.search(r"moves (\d+) latent cells", summary).group(1))
        assert cells > 10, summary  # the painted areas reached the server as masks

        # polygons: click a triangle's 3 vertices for the handle, then 3 for the target
        page.get_by_role("tab", name="Polygons").click()
        handle, target = [(100, 200), (200, 200), (150, 280)], [(260, 190), (380, 200), (310, 285)]
        for n, (x, y) in enumerate(handle + target, start=1):
            click_preview(page, x, y, n)
        wait_for_text(page, "#summary", r"\+ the pair being clicked")
        page.screenshot(path=shots / "3_polygon_clicked.png", full_page=True)
        boxes = [page.locator(f"#{side}-text textarea").input_value() for side in ("handle", "target")]
        vertices = [[float(c) for c in v.split(",")] for v in ";".join(boxes).split(";")]
        assert np.abs(np.array(vertices) - np.array(handle + target)).max() <= 2, vertices
        page.locator("#add-polygons").click()
        wait_for_text(page, "#summary", r"1\. brush masks, 2\. polygons;")
        page.screenshot(path=shots / "4_pairs_added.png", full_page=True)

        # drag, and wait for the result at the photo's size
        page.locator("#drag").click()
        # inverted ahead, on upload: the drag runs only the denoising half
        message = wait_for_text(page, "#drag-time", r"Dragged in .*cached inversion of this photo was reused",
                                timeout_s=240)
        result = page.locator("#result img").first
        result.wait_for()
        assert result.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [451, 300], message
        page.screenshot(path=shots / "6_result.png", full_page=True)

        # a bad input shows its message in the page, and the page keeps working
        page.locator("#add-polygons").click()
        page.get_by_text("no handle vertices yet").first.wait_for(timeout=30_000)
        page.screenshot(path=shots / "7_error.png", full_page=True)
