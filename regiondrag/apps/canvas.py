"""The drag canvas of the browser editor: select a region of the photo (lasso, rectangle, ellipse,
polygon, brush), grab it and move, turn, scale or skew it (perspective), the edit following.

The page part is canvas.js (read from disk and served inline: no build step, nothing fetched), run
by a gr.HTML element. The element's value is the one channel between the two, a JSON string:

- server -> page: ``{"photo": data URL, "live", "why"}`` starts over on a new photo; ``{"tab", "seq",
  "result": data URL, "message", "live", "why"}`` is an edit's result, which the page shows only if
  ``seq`` is still its latest request (an older edit that finishes late is dropped). ``live`` and
  ``why`` are `live_advice`: whether live mode should be on by default, from the re-edit times measured
  here, and why (the page shows it beside its Live checkbox);
- page -> server: ``{"tab", "seq", "live", "moving", "regions": [{"outline": [[x, y], ...], "matrix":
  3x3}]}``, each region a `TransformPair` (its matrix affine, or a homography once a corner was dragged
  on its own) whose handle is the outline's filled polygon, or, for a brushed region, ``"mask": [n0,
  n1, ...]`` instead of the outline: run lengths over the photo's pixels row by row, alternately
  outside and inside the region (n0 outside first, maybe 0). Sent with the
  event ``release`` after every finished action (a region selected, moved, deleted, an undo), and, in
  live mode (``live``), with the event ``input`` while a region is being dragged (``moving``: at most
  one a frame). The server edits a release's request when auto-run or live mode is on, a moving one
  always; each event collapses the requests that came while its edit ran or waited into the latest.

The library decides the edit (`dense_mapping` of the transform pairs); the page's warp is its preview.
"""
from __future__ import annotations

import base64
import io
import json
import statistics
from collections import deque
from pathlib import Path
from typing import Optional

import gradio as gr
import numpy as np
from PIL import Image

from ..regions import MAX_POLYGON_VERTICES, RegionError, TransformPair, rasterise_polygon

# Live mode edits while the mouse moves; an edit slower than this lags the mouse visibly, so live mode is
# on by default only where the re-edits (from the cached inversion) measured here are faster
LIVE_MAX_S = 0.25
RECENT_EDITS = 5  # re-edits the measurement keeps: a few, so that it follows a change of photo size or settings

CANVAS_JS = (Path(__file__).with_name("canvas.js")).read_text()
TOOLS = ("lasso", "rectangle", "ellipse", "polygon", "brush")
BRUSH_RADIUS = (1, 64, 12)  # the brush's radius in photo pixels: least, most, at first
CANVAS_HTML = ('<div class="rd-tools">' + "".join(
    f'<button data-tool="{t}" class="{"rd-on" if t == "lasso" else ""}">{t.capitalize()}</button>' for t in TOOLS)
    + '<label class="rd-size">radius <input type="range" min="{}" max="{}" value="{}"></label>'.format(*BRUSH_RADIUS)
    + '<span class="rd-keys">drag inside: move; corners: scale (Shift: keep aspect; Ctrl or Alt: one corner, '
      'perspective); round grip: rotate; Delete; Ctrl-Z / Ctrl-Shift-Z; brush: [ ]</span>'
      '<label class="rd-live"><input type="checkbox"> Live</label> <span class="rd-why"></span></div>'
      '<div class="rd-row"><canvas class="rd-view" width="1" height="1"></canvas>'
      '<img class="rd-result" alt=""></div><div class="rd-info">Upload a photo to start.</div>')
CANVAS_CSS = """
.rd-tools button { margin: 0 4px 4px 0; padding: 2px 10px; border: 1px solid #999; border-radius: 4px; }
.rd-tools button.rd-on { background: #286eff; color: #fff; }
.rd-keys, .rd-why { font-size: 0.85em; opacity: 0.8; }
.rd-live, .rd-size { margin: 0 8px 0 4px; font-size: 0.9em; }
.rd-size input { width: 80px; vertical-align: middle; }
.rd-live input { appearance: auto; accent-color: #286eff; }  /* gradio draws its ticks only in its own widgets */
.rd-row { display: flex; gap: 8px; align-items: flex-start; }
.rd-view { cursor: crosshair; outline: none; touch-action: none; }
.rd-result { max-width: 50%; }
.rd-result:not([src]) { display: none; }
.rd-info { font-size: 0.9em; margin-top: 4px; }
"""


def canvas_component() -> gr.HTML:
    return gr.HTML("", html_template=CANVAS_HTML, css_template=CANVAS_CSS, js_on_load=CANVAS_JS,
                   elem_id="canvas", apply_default_css=False)


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class EditTimes:
    """The seconds of the last few re-edits (edits from the cached inversion) run here: what live mode costs."""

    def __init__(self):
        self.seconds = deque(maxlen=RECENT_EDITS)

    def add(self, seconds: float) -> None:
        self.seconds.append(seconds)

    def typical(self) -> Optional[float]:
        return statistics.median(self.seconds) if self.seconds else None  # one slow outlier does not decide


def live_advice(edit_s: Optional[float], max_s: float = LIVE_MAX_S) -> dict:
    """Whether live mode should be on by default (re-edits measured faster than max_s), and why."""
    if edit_s is None:
        return {"live": False, "why": f"no re-edit timed yet; live mode needs them under {max_s:g} s"}
    return {"live": edit_s < max_s, "why": f"re-edits take {edit_s:.2f} s here; live mode needs under {max_s:g} s"}


def photo_message(photo: Image.Image, advice: dict) -> str:
    return json.dumps({"photo": data_url(photo)} | advice)


def result_message(request: dict, image: Optional[Image.Image], message: str, advice: dict) -> str:
    reply = {"tab": request.get("tab"), "seq": request.get("seq"), "message": message} | advice
    return json.dumps(reply | ({"result": data_url(image)} if image is not None else {}))


def read_request(value: Optional[str]) -> dict:
    """The page's JSON; anything else (no drag yet, the server's own last message) is no request."""
    try:
        request = json.loads(value or "")
    except ValueError:
        return {}
    return request if isinstance(request, dict) and isinstance(request.get("regions"), list) else {}


def canvas_pairs(request: dict, image_size: tuple[int, int]) -> list[TransformPair]:
    """The dragged regions as transform pairs, each checked (one line naming the region if unusable)."""
    pairs = []
    for i, region in enumerate(request.get("regions", []), start=1):
        try:
            if "mask" in region:  # brushed
                handle = mask_of_runs(region["mask"], image_size)
            else:
                handle = outline_mask(region["outline"], image_size)
            pair = TransformPair(handle, region["matrix"])
            pair.validate(image_size)
        except (KeyError, TypeError, ValueError) as e:  # RegionError is a ValueError
            raise RegionError(f"dragged region {i}: {e if isinstance(e, RegionError) else 'malformed'}; "
                              f"select it again or delete it") from None
        pairs.append(pair)
    return pairs


def outline_mask(outline, image_size: tuple[int, int]) -> np.ndarray:
    """A selected region's outline ([[x, y], ...]) -> (H, W) bool: the filled polygon."""
    outline = np.asarray(outline, np.float64)
    if outline.ndim != 2 or outline.shape[1] != 2 or not 3 <= len(outline) <= MAX_POLYGON_VERTICES:
        raise RegionError(f"an outline needs 3 to {MAX_POLYGON_VERTICES} vertices [x, y]")
    return rasterise_polygon(np.clip(outline, 0, np.array(image_size) - 1), image_size)


def mask_of_runs(runs, image_size: tuple[int, int]) -> np.ndarray:
    """A brushed region's run lengths (row by row, alternately outside and inside) -> (H, W) bool."""
    width, height = image_size
    runs = np.asarray(runs)
    if runs.ndim != 1 or runs.dtype.kind not in "iu" or (runs < 0).any() or runs.sum() != width * height:
        raise RegionError(f"a mask needs run lengths (whole numbers >= 0) that add up to the {width}x{height} "
                          f"photo's {width * height} pixels")
    return np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape(height, width)
