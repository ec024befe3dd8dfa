"""The drag canvas as a person uses it, in Debian's Chromium (headless, Playwright), with the tiny model.

Upload (the inversion ahead shows its steps, then "ready"), lasso a region, drag it by (+40, +10) px,
turn it 15 degrees by its round grip, release: with auto-run on, the result appears without pressing
anything. The export holds that transform; the CLI gives the identical image from it; the browser's
live preview equals the library's pixel preview; a burst of 20 drags runs at most 3 edits and shows
the last one's. Live mode: during a slow drag results come in before the mouse is released, far fewer
edits run than requests are sent, and the result shown last is the release's, the CLI's edit of the
export. The brush paints a region ([ ] set its radius) that drags like the others, and the export's
handle is what was painted. Corners dragged one by one (Ctrl or Alt held) give a homography, previewed
as the library does and edited. Screenshots go to the test's folder (REGIONDRAG_UI_SCREENSHOTS=folder copies
them there).
"""
import base64
import io
import json
import math
import re
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

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


MOVES_JS = """([points, size]) => new Promise(done => {
    const c = document.querySelector('#canvas canvas.rd-view'), b = c.getBoundingClientRect();
    const next = i => { if (i === points.length) return done();
        c.dispatchEvent(new PointerEvent('pointermove', {bubbles: true, buttons: 1,
            clientX: b.left + points[i][0] * b.width / size[0], clientY: b.top + points[i][1] * b.height / size[1]}));
        requestAnimationFrame(() => next(i + 1)); };
    next(0);
})"""


def moves(page, points) -> None:
    """Pointer moves (the button held) through photo pixels, one an animation frame: as fast as a hand."""
    page.evaluate(MOVES_JS, [points, list(Image.open(CHELSEA).size)])


def burst(page, drags) -> None:
    """Drags (from, to) in photo pixels, scripted in the page one right after another (each a release)."""
    page.evaluate(BURST_JS, [drags, list(Image.open(CHELSEA).size)])


# every text the inversion status shows, recorded as the page changes it (a step may show for milliseconds)
RECORD_INVERSION_JS = """() => { const el = document.querySelector('#inversion'); window.inversionTexts = [];
    new MutationObserver(() => window.inversionTexts.push(el.innerText))
        .observe(el, {subtree: true, childList: true, characterData: true}); }"""


def upload(page) -> list[str]:
    """Upload the photo and wait for its inversion (run ahead, on upload); the texts its status showed."""
    page.locator("#inversion").wait_for()
    page.evaluate(RECORD_INVERSION_JS)
    page.locator("#photo input[type=file]").set_input_files(str(CHELSEA))
    wait_for_text(page, "#inversion", r"Inversion ready", timeout_s=120)
    page.wait_for_function("() => document.querySelector('#canvas canvas.rd-view').width > 1")
    return page.evaluate("() => window.inversionTexts")


@contextmanager
def canvas_page(server_url: str, tmp_path: Path):
    """The editor in Chromium, the photo uploaded and its inversion ready: (page, screenshot folder, the
    texts the inversion status showed meanwhile)."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"screenshots: {shots}")
    with offline_page(server_url, 1700, shots) as page:
        page.goto(server_url)
        yield page, shots, upload(page)


def canvas_api(page, call: str):
    return page.evaluate(f"() => document.querySelector('#canvas canvas.rd-view').regiondrag.{call}")


def data_url_image(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def live_state(page) -> tuple[bool, str]:
    """The Live checkbox and the reason the page gives beside it."""
    return (page.locator("#canvas .rd-live input").is_checked(), page.locator("#canvas .rd-why").inner_text())


def export(page, folder):
    """Press Export and unzip what it gives into folder; its one pair."""
    page.locator("#export").click()
    link = page.locator("a[href*='regiondrag_regions.zip']").first
    link.wait_for(timeout=60_000)
    zipfile.ZipFile(io.BytesIO(page.request.get(link.get_attribute("href")).body())).extractall(folder)
    (pair,) = json.loads((folder / "regions.json").read_text())["pairs"]
    return pair


def cli_edit(folder, weights) -> np.ndarray:
    """`python -m regiondrag edit` of an unzipped export, with the test server's model and settings."""
    out = folder / "cli.png"
    subprocess.run([sys.executable, "-m", "regiondrag", "edit", "--image", str(folder / "photo.png"),
                    "--regions", str(folder / "regions.json"), "--out", str(out), "--weights", str(weights),
                    "--device", "cpu", "--dtype", "fp32", "--max-side", "128", "--quiet"], cwd=ROOT, check=True)
    return np.asarray(Image.open(out).convert("RGB"))


def assert_preview_is_the_librarys(page, folder) -> None:
    """The page's warp (its live preview) = the library's pixel copy-paste preview of the exported regions:
    every channel within one level on 99% of the pixels."""
    photo = Image.open(CHELSEA).convert("RGB")
    library = np.asarray(RegionDragPipeline.preview(photo, regions_from_json(folder / "regions.json", photo.size),
                                                    photo.size, None))
    browser = data_url_image(canvas_api(page, "previewPNG()"))
    close = (np.abs(library.astype(int) - browser.astype(int)) <= 1).all(-1).mean()
    assert close >= 0.99, close


def wait_for_result(page, seq: int) -> str:
    """The result <img> of request `seq` (the page shows only its latest request's)."""
    page.wait_for_function("s => { const i = document.querySelector('#canvas img.rd-result');"
                           " return i && i.dataset.seq === String(s) && i.complete && i.naturalWidth > 0; }",
                           arg=seq, timeout=240_000)
    return page.locator("#canvas img.rd-result").get_attribute("src")


@pytest.mark.slow  # a minute or two (a subprocess server, software-rendered canvas): CI runs it with -m slow
def test_drag_a_region_with_the_mouse_and_the_edit_follows(server_url, tiny_sd_folder, tmp_path):
    with canvas_page(server_url, tmp_path) as (page, shots, texts):  # inverted ahead, on upload
        assert any(re.search(r"Inversion: step \d+/10 \(\d+%\)\.\.\.", t) for t in texts), texts
        assert not live_state(page)[0] and "no re-edit timed yet" in live_state(page)[1]  # nothing timed yet
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

        # the export holds that transform; the CLI edits it into the identical image
        folder = tmp_path / "export"
        pair = export(page, folder)
        assert pair["kind"] == "transform"
        m = np.array(pair["matrix"], float)[:2]
        assert np.allclose(m, np.array(canvas_api(page, "regions()[0].matrix"), float)[:2])
        centre = (outline.min(0) + outline.max(0)) / 2
        moved = m @ np.append(centre, 1)
        assert np.abs(moved - centre - [40, 10]).max() <= 1, moved - centre
        assert abs(math.degrees(math.atan2(m[1, 0], m[0, 0])) - 15) <= 1, m
        assert_preview_is_the_librarys(page, folder)
        assert np.array_equal(cli_edit(folder, tiny_sd_folder), result)

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


@pytest.mark.slow  # a minute or two, as the test above
def test_live_mode_shows_edits_while_the_mouse_moves(server_url, tiny_sd_folder, tmp_path):
    with canvas_page(server_url, tmp_path) as (page, shots, _):
        page.locator("#auto-run input").check()
        # a rectangle round the cat's nose; its release runs an edit (auto-run), which times a re-edit
        page.locator("#canvas button[data-tool=rectangle]").click()
        drag(page, [(200, 185), (250, 235)])
        wait_for_result(page, canvas_api(page, "seq()"))
        page.wait_for_function("() => document.querySelector('#canvas .rd-live input').checked")
        assert "on by default: re-edits take" in live_state(page)[1]  # the server fixture's threshold: 60 s

        # a slow drag: a dozen moves, one a frame (each sends a request), then a pause with the mouse still
        # down, three times
        runs, first, segments, steps = canvas_api(page, "replies()"), canvas_api(page, "seq()"), 3, 12
        page.mouse.move(*to_screen(page, 225, 210))
        page.mouse.down()
        for segment in range(segments):
            before = canvas_api(page, "seq()")
            moves(page, [(225 + 3 * i, 210 - i) for i in range(segment * steps + 1, (segment + 1) * steps + 1)])
            # the live edit of where the region is now shows, the mouse still down
            page.wait_for_function("s => { const api = document.querySelector('#canvas canvas.rd-view').regiondrag;"
                                   " return api.seq() > s && api.shown() === api.seq(); }", arg=before, timeout=60_000)
            page.locator("#canvas").screenshot(path=shots / f"live_{segment + 1}.png")
        page.mouse.up()  # where the last move left the region: the release moves nothing more
        seq = canvas_api(page, "seq()")
        result = data_url_image(wait_for_result(page, seq))
        page.wait_for_timeout(1000)  # anything still running would have answered by now
        requests, runs = seq - first, canvas_api(page, "replies()") - runs
        print(f"live drag: {segments * steps} moves, {requests} requests, {runs} edits run")
        assert requests == segments * steps + 1, requests  # a request per move (frame), one on release
        assert runs <= 3 * segments + 1 and runs < requests / 2, (runs, requests)  # latest wins
        page.locator("#canvas").screenshot(path=shots / "live_released.png")

        # the result shown last is the release's: the CLI's edit of the export, pixel for pixel
        folder = tmp_path / "export"
        pair = export(page, folder)
        assert np.allclose(np.array(pair["matrix"], float)[:2, 2], [3 * segments * steps, -segments * steps],
                           atol=1), pair["matrix"]
        assert np.array_equal(cli_edit(folder, tiny_sd_folder), result)


def within(path, radius: float, size) -> np.ndarray:
    """(H, W) bool: the pixels whose centres lie within radius of the polyline `path` (what a round brush paints)."""
    ys, xs = np.mgrid[0:size[1], 0:size[0]] + 0.5
    near = np.zeros(xs.shape, bool)
    for (x0, y0), (x1, y1) in zip(path, path[1:]):
        t = np.clip(((xs - x0) * (x1 - x0) + (ys - y0) * (y1 - y0)) / max((x1 - x0) ** 2 + (y1 - y0) ** 2, 1e-9), 0, 1)
        near |= np.hypot(xs - x0 - t * (x1 - x0), ys - y0 - t * (y1 - y0)) <= radius
    return near


@pytest.mark.slow  # half a minute or more, as the tests above
def test_brush_a_region_and_drag_it(server_url, tmp_path):
    with canvas_page(server_url, tmp_path) as (page, shots, _):
        page.locator("#canvas button[data-tool=brush]").click()
        page.locator("#canvas canvas.rd-view").focus()
        for key in "]]]":  # 12 -> 18 px
            page.keyboard.press(key)
        assert page.locator("#canvas .rd-size input").input_value() == "18"

        # one stroke, zigzagging over the cat's ear: a blob
        stroke = [(300, 40), (370, 40), (370, 60), (300, 60), (300, 80), (370, 80)]
        drag(page, stroke, steps=8)
        assert canvas_api(page, "regions().length") == 1
        page.locator("#canvas").screenshot(path=shots / "brush_1_painted.png")
        drag(page, [(335, 60), (315, 75), (295, 90)])  # grabbed inside, moved by (-40, +30)
        page.locator("#canvas").screenshot(path=shots / "brush_2_dragged.png")

        folder = tmp_path / "export"
        pair = export(page, folder)
        assert pair["kind"] == "transform" and isinstance(pair["handle"], str)  # a mask PNG beside regions.json
        (region,) = regions_from_json(folder / "regions.json", Image.open(CHELSEA).size)
        painted = within(stroke, 18, Image.open(CHELSEA).size)
        iou = (region.handle & painted).sum() / (region.handle | painted).sum()
        assert iou > 0.9, iou
        assert np.allclose(region.matrix[:2], [[1, 0, -40], [0, 1, 30]], atol=1), region.matrix
        assert_preview_is_the_librarys(page, folder)


@pytest.mark.slow  # half a minute or more, as the tests above
def test_perspective_corners_dragged_one_by_one(server_url, tiny_sd_folder, tmp_path):
    with canvas_page(server_url, tmp_path) as (page, shots, _):
        page.locator("#auto-run input").check()
        page.locator("#canvas button[data-tool=rectangle]").click()
        drag(page, [(150, 100), (250, 180)])  # round the cat's left eye
        box = np.array(canvas_api(page, "grips()")["corners"], float)  # top left, top right, bottom right, left
        quad = box + [[0, 0], [25, -15], [-10, 25], [0, 0]]
        for key, corner in (("Control", 1), ("Alt", 2)):  # each corner on its own
            page.keyboard.down(key)
            drag(page, [box[corner], (box[corner] + quad[corner]) / 2, quad[corner]])
            page.keyboard.up(key)
        page.locator("#canvas").screenshot(path=shots / "perspective_1_dragged.png")
        result = data_url_image(wait_for_result(page, canvas_api(page, "seq()")))
        page.locator("#canvas").screenshot(path=shots / "perspective_2_result.png")

        folder = tmp_path / "export"
        m = np.array(export(page, folder)["matrix"], float)
        assert m.shape == (3, 3) and np.abs(m[2, :2]).max() > 1e-5, m  # a homography, not an affine map
        moved = m @ np.vstack([box.T, np.ones(4)])
        assert np.abs((moved[:2] / moved[2]).T - quad).max() <= 1, moved
        assert_preview_is_the_librarys(page, folder)
        assert np.array_equal(cli_edit(folder, tiny_sd_folder), result)
