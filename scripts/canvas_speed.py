"""How fast the drag canvas answers: preview frames per second, release-to-result, inversion ahead.

    python scripts/canvas_speed.py                      # the tiny random-weight model (tests' conftest), CPU
    python scripts/canvas_speed.py --weights FOLDER --device cuda --max-side 512

Prints three numbers:
- preview frames per second while a region is dragged in headless Chromium (each pointer move warps the
  photo in the page and redraws the canvas; 300 scripted moves, timed in the page);
- release-to-result: from the mouse's release to the edited image shown (auto-run, cached inversion);
- the inversion-ahead time saved on the first drag: a first edit of a fresh photo with and without the
  inversion done beforehand, in this process, and their difference.
"""
from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from PIL import Image  # noqa: E402

from test_canvas_browser import BURST_JS, CHELSEA, CHROMIUM, CHROMIUM_FLAGS  # noqa: E402

MOVES = 300
FRAMES_JS = """([n, size]) => {
    const c = document.querySelector('#canvas canvas.rd-view'), b = c.getBoundingClientRect();
    const at = (type, x, y) => c.dispatchEvent(new PointerEvent(type, {bubbles: true, button: 0, buttons: 1,
        clientX: b.left + x * b.width / size[0], clientY: b.top + y * b.height / size[1]}));
    at('pointerdown', 190, 135);
    const t0 = performance.now();
    for (let i = 1; i <= n; i++) at('pointermove', 190 + 60 * Math.sin(i / 20), 135 + 20 * Math.cos(i / 30));
    const seconds = (performance.now() - t0) / 1000;
    at('pointermove', 190, 135);  // back where it started
    at('pointerup', 190, 135);
    return seconds;
}"""
LASSO = [[190 + 35 * math.cos(a * math.pi / 12), 135 + 28 * math.sin(a * math.pi / 12)] for a in range(25)]


def browser_numbers(weights: str, device: str, max_side: int) -> tuple[float, float]:
    from playwright.sync_api import sync_playwright
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "regiondrag", "ui", "--weights", weights, "--device", device,
                               "--port", str(port), "--max-side", str(max_side)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(360):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1700})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#photo input[type=file]").set_input_files(str(CHELSEA))
            page.get_by_text("Inversion ready").wait_for(timeout=600_000)
            page.wait_for_function("() => document.querySelector('#canvas canvas.rd-view').width > 1")
            size = list(Image.open(CHELSEA).size)
            page.evaluate("""([pts, size]) => {  // a lasso, scripted
                const c = document.querySelector('#canvas canvas.rd-view'), b = c.getBoundingClientRect();
                const at = (type, [x, y]) => c.dispatchEvent(new PointerEvent(type, {bubbles: true, button: 0,
                    buttons: 1, clientX: b.left + x * b.width / size[0], clientY: b.top + y * b.height / size[1]}));
                at('pointerdown', pts[0]); pts.slice(1).forEach(p => at('pointermove', p)); at('pointerup', pts[0]);
            }""", [LASSO, size])
            fps = MOVES / page.evaluate(FRAMES_JS, [MOVES, size])
            page.locator("#auto-run input").check()
            page.wait_for_timeout(2000)  # edits of the lasso and the timed drag are over
            api = "document.querySelector('#canvas canvas.rd-view').regiondrag"
            before = page.evaluate(f"() => {api}.seq()")
            release = time.perf_counter()
            page.evaluate(BURST_JS, [[[[190, 135], [230, 145]]], size])
            seq = page.evaluate(f"() => {api}.seq()")
            assert seq == before + 1, "the timed drag did not grab the region"

            page.wait_for_function("s => document.querySelector('#canvas img.rd-result').dataset.seq === String(s)",
                                   arg=seq, timeout=600_000, polling=10)
            return fps, time.perf_counter() - release
    finally:
        server.terminate()
        server.wait(timeout=30)


def first_drag_numbers(weights: str, device: str, max_side: int) -> tuple[float, float]:
    """(first edit without the inversion ahead, first edit after it), seconds, in this process."""
    from regiondrag.apps.region_file import regions_from_json
    from regiondrag.pipeline import RegionDragPipeline
    pipe = RegionDragPipeline.from_pretrained(weights, device=device)
    photo = Image.open(CHELSEA).convert("RGB")
    doc = {"pairs": [{"kind": "transform", "handle": {"polygon": LASSO[:-1]}, "matrix": [[1, 0, 40], [0, 1, 10]]}]}
    regions = regions_from_json(doc, photo.size)
    config = pipe.config.replace(max_side=max_side)
    pipe.edit(photo, regions, config=config, progress=False)  # warm-up: first calls allocate
    times = []
    for ahead in (False, True):
        pipe.clear_cache()
        if ahead:
            pipe.invert(RegionDragPipeline.working_photo(photo, max_side), "", config, progress=False)
        clock = time.perf_counter()
        pipe.edit(photo, regions, config=config, progress=False)
        times.append(time.perf_counter() - clock)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", help="SD weights folder (default: the tests' tiny random-weight model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-side", type=int, default=128)
    args = parser.parse_args()
    weights = args.weights
    if weights is None:
        from conftest import save_diffusers_folder
        weights = str(save_diffusers_folder(Path(tempfile.mkdtemp(prefix="tiny_sd_"))))
    fps, release = browser_numbers(weights, args.device, args.max_side)
    cold, ahead = first_drag_numbers(weights, args.device, args.max_side)
    print(f"machine: {os.cpu_count()} CPUs, device {args.device}, working size {args.max_side}, "
          f"weights {'tiny random' if args.weights is None else args.weights}")
    print(f"preview frames per second (headless Chromium, {MOVES} pointer moves): {fps:.0f}")
    print(f"release-to-result (auto-run, cached inversion): {release:.2f} s")
    print(f"first drag: {cold:.2f} s without the inversion ahead, {ahead:.2f} s with it: "
          f"{cold - ahead:.2f} s saved (ratio {ahead / cold:.2f})")


if __name__ == "__main__":
    main()
