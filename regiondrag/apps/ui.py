"""The browser editor: `python -m regiondrag ui` — draw regions on a photo, see the preview, drag.

The drag canvas (select a region, grab it, the edit follows on release, or as the mouse moves in live
mode) is canvas.py / canvas.js; here are its handlers: the inversion started on upload (showing its
steps), the dragged regions as the session's transform pairs, and the auto-run and live edits, timed
(the re-edit times decide whether live mode is on by default).

A thin Gradio layer over the library: regions are the dataclasses of `regiondrag.regions`
(validated by them), the feedback is `draw_preview` over `dense_mapping` and the pipeline's
copy-pasted pixel preview, and "Drag" is one `RegionDragPipeline.edit` call (in `run_edit`).

Per browser tab, a `Session` (gr.State) holds the photo and the pairs added so far, and another
state the points / polygon vertices being clicked, shown in two text boxes (typing works too). The
model is shared by all tabs, one edit at a time (the Drag event's queue has one worker).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import os
import queue
import shutil
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home

import cv2
import gradio as gr
import numpy as np
from PIL import Image

from ..config import METHODS, ConfigError, EditConfig
from ..copy_paste import PASTE_SCHEDULES
from ..image_io import MAX_SIDE, ImageError, ImageTooLargeError, load_image, working_size
from ..mapping import dense_mapping, latent_size_of
from ..pipeline import RegionDragPipeline
from ..precision import precision_note
from ..regions import (DEFAULT_POINT_RADIUS, MAX_PAIRS, POINT_SHAPES, MaskPair, PointPairs, PolygonPair, Region,
                       RegionError, RegionPoints)
from .canvas import (LIVE_MAX_S, EditTimes, canvas_component, canvas_pairs, live_advice, photo_message, read_request,
                     result_message)
from .memory import failed_allocation, give_memory_back
from .outputs import save_image_atomic
from .preview import HANDLE_RGB, TARGET_RGB, draw_preview
from .region_file import regions_from_json, regions_to_json
from .uploads import MAX_UPLOAD_BYTES, UploadError, unpack_import

# Photos whose long side exceeds twice the working size (and 1024 px) are resized on upload: the model
# sees the working size anyway, and a canvas of a 4000 px photo is slow to draw on and to send back.
def upload_max_side(max_side: int) -> int:
    return 2 * max(max_side, MAX_SIDE)

POLYGON_SIDES = {"Triangle (3 vertices, affine)": 3, "Quadrilateral (4 vertices, perspective)": 4}
KIND_TABS = {"masks": "Brush masks", "polygons": "Polygons", "region_points": "Region + points",
             "points": "Point pairs", "transform": "Dragged region"}
# Clicks accumulate in a per-tab gr.State (read on the server when each click is processed, one at a
# time), mirrored to the two text boxes: reading the boxes' values as the browser sent them would lose
# a click made before the previous one's answer arrived.
NO_CLICKS = ("", "")
REGIONS_JSON = "regions.json"
PHOTO_PNG = "photo.png"


class UIError(ValueError):
    """Input the page cannot use; shown in the page as one line saying what to do."""


@dataclass
class Session:
    """One browser tab's edit: the photo (as edited, maybe resized on upload) and its pairs."""
    photo: Optional[Image.Image] = None
    pairs: list = field(default_factory=list)
    max_side: int = MAX_SIDE  # the long side the model works at

    @property
    def latent(self) -> tuple[int, int]:
        """The latent grid the edit maps on (the working size's)."""
        return latent_size_of(working_size(*self.photo.size, self.max_side))

    def with_pairs(self, pairs: list) -> "Session":
        return dataclasses.replace(self, pairs=pairs)


PAGE_ERRORS = (UIError, RegionError, ImageError, UploadError, ConfigError, FloatingPointError)  # bad input


def shows_errors(fn):
    """Bad input, and memory running out, become a one-line message in the page (gr.Error), never a
    traceback; a generator (an event that streams updates) stays one, as gradio tells them apart by their
    function. Running out of memory is told outside the `except`: the failed call's frames are freed by
    then, so give_memory_back can return what they held."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)  # keeps the signature, where gradio finds gr.Progress
        def wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
                return
            except PAGE_ERRORS as e:
                raise gr.Error(str(e), print_exception=False) from None
            except Exception as e:
                asked = failed_allocation(e)
                if asked is None:
                    raise
            raise _out_of_memory(asked)
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except PAGE_ERRORS as e:
                raise gr.Error(str(e), print_exception=False) from None
            except Exception as e:
                asked = failed_allocation(e)
                if asked is None:
                    raise
            raise _out_of_memory(asked)
    return wrapper


def _out_of_memory(asked: str) -> gr.Error:
    give_memory_back()
    return gr.Error(f"out of memory on the server: an allocation of {asked} failed, and nothing changed; try "
                    f"again when fewer edits run, or a smaller photo; whoever runs the server can start it with a "
                    f"smaller --max-side, half precision (--dtype bf16 or fp16) or on a GPU", print_exception=False)


# -- photo ------------------------------------------------------------------------------------

@shows_errors
def load_photo(path: Optional[str], max_side: int) -> tuple[Session, str]:
    """A new photo: a fresh session (no pairs), and a note when the photo was resized."""
    if not path:
        raise UIError("no photo: upload a PNG or JPEG file")
    try:
        photo = load_image(path)
    except ImageTooLargeError as e:  # a valid photo, too big: say so (with the upload's name, not the server's path)
        raise UIError(str(e).replace(str(path), Path(path).name)) from None
    except ImageError:
        raise UIError(f"cannot read {Path(path).name} as an image; upload a PNG or JPEG photo") from None
    note = f"Photo {photo.width}x{photo.height}."
    if max(photo.size) > upload_max_side(max_side):
        scale = upload_max_side(max_side) / max(photo.size)
        size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
        note = (f"The photo is {photo.width}x{photo.height}, much larger than the {max_side} px the model works at; "
                f"it was resized to {size[0]}x{size[1]} for editing (regions, export and result use this size).")
        photo = photo.resize(size, Image.LANCZOS)
    work = working_size(*photo.size, max_side)
    if work != photo.size:
        note += f" The model works at {work[0]}x{work[1]}; the result is scaled back to {photo.width}x{photo.height}."
    return Session(photo, [], max_side), note


def _need_photo(session: Session) -> Image.Image:
    if session.photo is None:
        raise UIError("upload a photo first")
    return session.photo


# -- pairs --------------------------------------------------------------------------------------

def parse_points(text: str, what: str) -> np.ndarray:
    """'x,y; x,y; ...' (the text boxes' format) -> (N, 2) float."""
    points = []
    for item in filter(None, (s.strip() for s in (text or "").split(";"))):
        try:
            x, y = (float(c) for c in item.split(","))
        except ValueError:
            raise UIError(f"{what}: {item!r} is not a point; write points as x,y separated by ;") from None
        points.append((x, y))
    return np.array(points, np.float64).reshape(-1, 2)


def format_points(points) -> str:
    return "; ".join(f"{x:g},{y:g}" for x, y in points)


def editor_mask(value, photo: Image.Image, what: str) -> np.ndarray:
    """(H, W) bool: the pixels painted on any layer of an ImageEditor value."""
    layers = (value or {}).get("layers") or []
    mask = np.zeros(photo.size[::-1], bool)
    for layer in layers:
        a = np.asarray(layer)
        if a.ndim != 3 or a.shape[2] != 4:
            raise UIError(f"{what}: the painted layer is not an RGBA image; paint with the brush")
        painted = a[..., 3] > 0
        if painted.shape != mask.shape:  # the canvas is the background's size; guard a rescaled one
            painted = cv2.resize(painted.astype(np.uint8), photo.size, interpolation=cv2.INTER_NEAREST) > 0
        mask |= painted
    return mask


def _checked(pair: Region, session: Session) -> Region:
    try:
        pair.validate(session.photo.size)
        dense_mapping([pair], session.photo.size, session.latent)  # a pair that moves no latent cell: say so now
    except RegionError as e:
        raise UIError(f"{KIND_TABS[pair.kind].lower()}: {e}") from None
    return pair


def _need_points(points: np.ndarray, what: str, how: str) -> np.ndarray:
    if not len(points):
        raise UIError(f"no {what} yet: {how}")
    return points


def mask_pair(session: Session, handle_value, target_value) -> MaskPair:
    photo = _need_photo(session)
    handle = editor_mask(handle_value, photo, "handle")
    target = editor_mask(target_value, photo, "target")
    if target.any() and not handle.any():
        raise UIError("a target is painted but no handle: paint the handle region (red) too")
    return _checked(MaskPair(handle, target), session)


def polygon_pair(session: Session, sides: str, handle_text: str, target_text: str) -> PolygonPair:
    _need_photo(session)
    k = POLYGON_SIDES[sides]
    handle = _need_points(parse_points(handle_text, "handle vertices"), "handle vertices",
                          f"click the handle polygon's {k} vertices on the preview")
    if len(handle) < k and not target_text.strip():
        raise UIError(f"the handle has {len(handle)} of its {k} vertices; click {k - len(handle)} more on the preview")
    target = _need_points(parse_points(target_text, "target vertices"), "target vertices",
                          f"after the handle's, click the target polygon's {k} vertices in the same order")
    return _checked(PolygonPair(handle, target), session)


def region_points_pair(session: Session, region_value, handle_text: str, target_text: str) -> RegionPoints:
    region = editor_mask(region_value, _need_photo(session), "region")
    if not region.any():
        raise UIError("no region painted: paint the region to move on the canvas of this tab")
    handle, target = _point_lists(handle_text, target_text)
    return _checked(RegionPoints(region, handle, target), session)


def point_pairs(session: Session, handle_text: str, target_text: str, radius: float, shape: str) -> PointPairs:
    _need_photo(session)
    handle, target = _point_lists(handle_text, target_text)
    return _checked(PointPairs(handle, target, float(radius), shape), session)


def _point_lists(handle_text: str, target_text: str) -> tuple[np.ndarray, np.ndarray]:
    handle = _need_points(parse_points(handle_text, "handle points"), "handle points",
                          "click a handle point on the preview, then its target")
    target = _need_points(parse_points(target_text, "target points"), "target points",
                          "click the target of each handle point on the preview")
    return handle, target


def _added(session: Session, pair: Region) -> tuple[Session, str]:
    if len(session.pairs) >= MAX_PAIRS:
        raise UIError(f"this photo has {len(session.pairs)} pairs, the most one edit takes; undo or clear some first")
    pairs = session.pairs + [pair]
    return session.with_pairs(pairs), f"Added pair {len(pairs)} ({KIND_TABS[pair.kind].lower()})."


@shows_errors
def add_masks(session: Session, handle_value, target_value) -> tuple[Session, str]:
    return _added(session, mask_pair(session, handle_value, target_value))


@shows_errors
def add_polygons(session: Session, sides: str, handle_text: str, target_text: str):
    return *_added(session, polygon_pair(session, sides, handle_text, target_text)), *NO_CLICKS, NO_CLICKS


@shows_errors
def add_region_points(session: Session, region_value, handle_text: str, target_text: str):
    pair = region_points_pair(session, region_value, handle_text, target_text)
    return *_added(session, pair), *NO_CLICKS, NO_CLICKS


@shows_errors
def add_points(session: Session, handle_text: str, target_text: str, radius: float, shape: str):
    return *_added(session, point_pairs(session, handle_text, target_text, radius, shape)), *NO_CLICKS, NO_CLICKS


def undo_pair(session: Session) -> tuple[Session, str]:
    if not session.pairs:
        return session, "No pair to undo."
    return session.with_pairs(session.pairs[:-1]), f"Removed pair {len(session.pairs)}."


def clear_pairs(session: Session) -> tuple[Session, str, str, str]:
    return session.with_pairs([]), "Cleared all pairs.", *NO_CLICKS, NO_CLICKS


# -- clicks on the preview ----------------------------------------------------------------------

@shows_errors
def click(kind: str, sides: str, clicks: tuple[str, str], evt: gr.SelectData):
    """The next polygon vertex (the handle's K, then the target's K), or the next handle / target point."""
    handle, target = parse_points(clicks[0], "handle"), parse_points(clicks[1], "target")
    point = np.array([evt.index], np.float64)
    if kind == "polygons":
        k = POLYGON_SIDES[sides]
        if len(target) >= k:
            gr.Warning(f"both polygons have {k} vertices: press Add pair, or Undo click")
        elif len(handle) < k:
            handle = np.vstack([handle, point])
        else:
            target = np.vstack([target, point])
    elif len(handle) > len(target):
        target = np.vstack([target, point])
    else:
        handle = np.vstack([handle, point])
    return _clicked(handle, target)


@shows_errors
def undo_click(kind: str, clicks: tuple[str, str]):
    """Drop the last clicked point (polygons: the target's vertices come after all the handle's)."""
    handle, target = parse_points(clicks[0], "handle"), parse_points(clicks[1], "target")
    if kind == "polygons" and len(target) or kind != "polygons" and 0 < len(target) >= len(handle):
        target = target[:-1]
    else:
        handle = handle[:-1]
    return _clicked(handle, target)


def _clicked(handle: np.ndarray, target: np.ndarray):
    """(clicks state, handle box, target box)."""
    texts = format_points(handle), format_points(target)
    return texts, *texts


# -- live feedback: regions, dense mapping and the copy-paste preview, without the model --------------

def pending_pair(session: Session, kind: str, sides: str, handle_text: str, target_text: str,
                 radius: float, shape: str) -> Optional[Region]:
    """The polygon or point pair being clicked, once complete and valid, drawn before it is added."""
    try:
        if kind == "polygons":
            return polygon_pair(session, sides, handle_text, target_text)
        if kind == "points":
            return point_pairs(session, handle_text, target_text, radius, shape)
    except (UIError, RegionError):
        pass
    return None


def render(session: Session, kind: str, sides: str, handle_text: str, target_text: str, radius: float, shape: str):
    """(preview, copy-paste preview, summary) for the session's pairs plus the one being clicked."""
    photo = session.photo
    if photo is None:
        return None, None, "Upload a photo to start."
    pending = pending_pair(session, kind, sides, handle_text, target_text, radius, shape)
    regions = session.pairs + ([pending] if pending is not None else [])
    if not regions:
        drawing, copy_pasted, summary = photo.copy(), None, "No pairs yet: draw one in a tab and press Add pair."
    else:
        latent = session.latent
        mapping = dense_mapping(regions, photo.size, latent)
        drawing = draw_preview(photo, regions, mapping, latent)
        copy_pasted = RegionDragPipeline.preview(RegionDragPipeline.working_photo(photo, session.max_side), regions,
                                                 photo.size, mapping)
        names = ", ".join(f"{i}. {KIND_TABS[r.kind].lower()}" for i, r in enumerate(session.pairs, start=1))
        summary = (f"**Pairs:** {names or 'none added'}"
                   f"{' (+ the pair being clicked, not added yet)' if pending is not None else ''}; "
                   f"the dense mapping moves {len(mapping[0])} latent cells of {latent[0]}x{latent[1]}.")
    if pending is None:
        _mark_clicks(drawing, handle_text, target_text)
    return drawing, copy_pasted, summary


def _mark_clicks(drawing: Image.Image, handle_text: str, target_text: str) -> None:
    """Dots where points / vertices were clicked for a pair not complete yet (red handle, blue target)."""
    canvas = np.asarray(drawing).copy()
    radius = max(3, round(min(drawing.size) / 100))
    for text, rgb in ((handle_text, HANDLE_RGB), (target_text, TARGET_RGB)):
        try:
            points = parse_points(text, "")
        except UIError:
            continue
        for x, y in np.round(points).astype(int):
            cv2.circle(canvas, (x, y), radius + 1, (255, 255, 255), cv2.FILLED, cv2.LINE_AA)
            cv2.circle(canvas, (x, y), radius, rgb, cv2.FILLED, cv2.LINE_AA)
    drawing.paste(Image.fromarray(canvas))


def editor_value(photo: Optional[Image.Image]):
    """A blank canvas over the photo (or no canvas without a photo)."""
    return None if photo is None else {"background": photo, "layers": [], "composite": None}


# -- export / import in the CLI's JSON format -------------------------------------------------------

# Gradio copies a returned file into its cache (deleted after CACHE_CLEANUP) as the answer is sent, so
# an export's own folder is not needed a minute later: each export removes those, and exports do not pile up.
EXPORTS = Path(tempfile.gettempdir()) / f"regiondrag_exports_{os.getpid()}"
EXPORT_KEEP_S = 60


def _export_folder() -> Path:
    EXPORTS.mkdir(exist_ok=True)
    for old in EXPORTS.iterdir():
        with contextlib.suppress(FileNotFoundError):  # another export removed it first
            if time.time() - old.stat().st_mtime > EXPORT_KEEP_S:
                shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=EXPORTS))


@shows_errors
def export_regions(session: Session) -> str:
    """A zip of regions.json (masks as PNGs beside it) and photo.png, for `python -m regiondrag edit`."""
    photo = _need_photo(session)
    if not session.pairs:
        raise UIError("no pairs to export: add a pair first")
    out = _export_folder() / "regiondrag_regions.zip"  # gradio serves it
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        folder = Path(tmp)
        doc = regions_to_json(session.pairs, folder)
        (folder / REGIONS_JSON).write_text(json.dumps(doc, indent=1) + "\n")
        save_image_atomic(photo, folder / PHOTO_PNG)
        for f in sorted(folder.iterdir()):
            z.write(f, f.name)
    return str(out)


@shows_errors
def import_regions(session: Session, files: Optional[list]) -> tuple[Session, str]:
    """Pairs from a region file (with the mask PNGs it names) or an exported zip; they replace the current ones."""
    photo = _need_photo(session)
    if not files:
        raise UIError("choose a regions .json (with the mask PNGs it names) or an exported .zip")
    with tempfile.TemporaryDirectory() as tmp:  # the masks are read into the pairs, then the files go
        region_file = unpack_import(files, Path(tmp))
        pairs = regions_from_json(region_file, photo.size)
    return session.with_pairs(pairs), f"Imported {len(pairs)} pair(s) from {region_file.name}."


# -- drag: the model ------------------------------------------------------------------------------

def edit_config(base: EditConfig, **controls) -> EditConfig:
    """The page's controls (named as EditConfig's settings) over the pipeline's defaults; out of range: one line."""
    try:
        return base.with_settings(controls)
    except ConfigError as e:
        raise UIError(f"settings: {e}") from None


def run_edit(pipe: RegionDragPipeline, photo: Image.Image, regions: list, prompt: str,
             mask: Optional[np.ndarray], config: EditConfig):
    """The page's one call to the model (progress bars on: gr.Progress follows them)."""
    return pipe.edit(photo, regions, prompt, mask, config=config, progress=True)


def drag_message(seconds: float, reused: bool, timings: dict) -> str:
    if reused:
        return f"Dragged in {seconds:.2f} s: the cached inversion of this photo was reused, only the denoising ran."
    parts = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.2f} s" for k, v in timings.items() if v >= 0.005)
    return f"Dragged in {seconds:.2f} s ({parts})."


# -- the page ---------------------------------------------------------------------------------

HELP = """\
**1.** Upload a photo. **2.** On the canvas, select a region and drag it (inside: move, corners: scale,
round grip: rotate); or, below, draw a handle (red: where content comes from) and its target (blue: where
it goes) in a tab and press **Add pair**; pairs of any kinds add up. **3.** Release (auto-run) or press **Drag**.
The preview (regions, dense mapping arrows, and the copy-pasted pixels) needs no model."""


def build_app(pipe: RegionDragPipeline, max_side: Optional[int] = None,
              live_max_s: Optional[float] = None) -> gr.Blocks:
    """The page; `pipe` is shared by every browser tab, one Drag at a time. Its settings start at the
    pipeline's defaults (the reference's, at the backbone's working size unless max_side is given).
    Live mode is on by default where the re-edits timed here take under live_max_s seconds (LIVE_MAX_S)."""
    defaults = pipe.config
    max_side = max_side or defaults.max_side
    live_max_s = LIVE_MAX_S if live_max_s is None else live_max_s
    edit_times = EditTimes()  # of this model on this device, whichever tab asked

    def advice() -> dict:
        return live_advice(edit_times.typical(), live_max_s)

    @shows_errors
    def load(path):
        session, note = load_photo(path, max_side)
        blank = editor_value(session.photo)
        return session, note, *NO_CLICKS, NO_CLICKS, blank, blank, blank, blank

    def config_of(session: Session, steps, start_t, noise_scale, seed, method, ip_scale, paste_schedule,
                  attention_swap) -> EditConfig:
        return edit_config(pipe.config, steps=steps, start_t=start_t, noise_scale=noise_scale, seed=seed,
                           method=method, ip_scale=ip_scale, paste_schedule=paste_schedule,
                           attention_swap=bool(attention_swap), max_side=session.max_side)

    def edited(session: Session, regions: list, mask_value, prompt, settings):
        """(result, message) of one edit of the session's photo, timed, saying whether the inversion was reused."""
        photo = _need_photo(session)
        mask = editor_mask(mask_value, photo, "editable area")
        cached, clock = pipe.cached_inversion(), time.perf_counter()
        result = run_edit(pipe, photo, regions, prompt or "", mask if mask.any() else None,
                          config_of(session, *settings))
        seconds = time.perf_counter() - clock
        reused = cached is not None and pipe.cached_inversion() is cached
        if reused:
            edit_times.add(seconds)
        return result, drag_message(seconds, reused, result.timings)

    @shows_errors
    def drag(session: Session, mask_value, prompt, *settings, progress=gr.Progress(track_tqdm=True)):
        if not session.pairs:
            raise UIError("no pairs to drag: draw a handle and a target, press Add pair, then Drag")
        result, message = edited(session, session.pairs, mask_value, prompt, settings)
        return session.photo, result.image, message

    @shows_errors
    def sync_canvas(session: Session, value):
        """The canvas's dragged regions replace the session's transform pairs (the ones export writes)."""
        request = read_request(value)
        if session.photo is None or not request:
            return gr.skip()
        kept = [p for p in session.pairs if p.kind != "transform"]
        return session.with_pairs(kept + canvas_pairs(request, session.photo.size))

    @shows_errors
    def edit_request(moving: bool, session: Session, value, auto, mask_value, prompt, *settings,
                     progress=gr.Progress(track_tqdm=True)):
        """Auto-run and live mode: the edit of the canvas's latest regions, from the cached inversion; the
        page shows it only if no newer request came meanwhile (a queued one is replaced: trigger_mode
        always_last). `moving`: this handler is the live event's, whose requests come mid-drag; a request
        of the other event (read when a replaced one's turn came) is that event's to run."""
        request = read_request(value)
        if session.photo is None or not request or bool(request.get("moving")) != moving:
            return gr.skip()
        if not (moving or auto or request.get("live")):
            return gr.skip()
        regions = [p for p in session.pairs if p.kind != "transform"] + canvas_pairs(request, session.photo.size)
        if not regions:
            return result_message(request, None, "No regions: select one on the photo.", advice())
        result, message = edited(session, regions, mask_value, prompt, settings)
        return result_message(request, result.image, message, advice())

    @shows_errors
    def invert_ahead(session: Session, prompt, *settings):
        """Invert the photo now, while the user draws (the first drag then runs only the denoising half),
        showing its steps as they finish: the inversion runs in a thread that reports them here."""
        if session.photo is None:
            yield gr.skip()
            return
        config, clock = config_of(session, *settings), time.perf_counter()
        cached, steps = pipe.cached_inversion(), queue.SimpleQueue()
        work = RegionDragPipeline.working_photo(session.photo, config.max_side)
        with ThreadPoolExecutor(1) as thread:
            job = thread.submit(pipe.invert, work, prompt or "", config, progress=False,
                                on_step=lambda i, n: steps.put(f"Inversion: step {i}/{n} ({100 * i // n}%)..."))
            while not job.done() or not steps.empty():
                with contextlib.suppress(queue.Empty):
                    yield steps.get(timeout=0.1)
        if job.result() is cached:
            yield "Inversion ready (already cached)."
        else:
            yield f"Inversion ready ({time.perf_counter() - clock:.2f} s): a drag now runs only the denoising half."

    cpu = pipe.device.type == "cpu"
    with gr.Blocks(title="RegionDrag", analytics_enabled=False, delete_cache=CACHE_CLEANUP) as app:
        session, kind, clicks = gr.State(Session()), gr.State("masks"), gr.State(NO_CLICKS)
        gr.Markdown("## RegionDrag: drag regions of a photo\n" + HELP)
        gr.Markdown(f"Model on **{pipe.device.type}** in {precision_note(pipe.device, pipe.dtype)}, working size "
                    f"{max_side} px." + (" On CPU a Drag is slow (minutes at 512 px); the preview is instant."
                                         if cpu else ""))
        with gr.Row():
            photo_file = gr.File(label="Photo (PNG, JPEG, ...)", file_types=["image"], elem_id="photo", height=120)
            import_files = gr.File(label="Import regions: a region .json with its mask PNGs, or an exported .zip",
                                   file_count="multiple", file_types=[".json", ".png", ".zip"], elem_id="import",
                                   height=120)
            with gr.Column():
                export_button = gr.Button("Export regions (.zip: regions.json, masks, photo)", elem_id="export")
                export_file = gr.File(label="Exported regions", interactive=False, height=120)
        status = gr.Markdown(elem_id="status")
        with gr.Group():
            gr.Markdown("### Drag on the photo\nSelect a region (lasso, rectangle, ellipse, polygon, brush), then "
                        "drag it: the preview follows the mouse; on release the edit runs (with auto-run on), or "
                        "as the mouse moves (Live).")
            auto_run = gr.Checkbox(value=not cpu, label="Auto-run the edit on release" + (
                " (on CPU an edit takes long: off by default, use Drag)" if cpu else ""), elem_id="auto-run")
            inversion_status = gr.Markdown("Inversion: starts when a photo is uploaded.", elem_id="inversion")
            canvas = canvas_component()
        gr.Markdown("### Precise input: regions by form (brush masks, polygons, points)")
        with gr.Row():
            with gr.Column():
                with gr.Tabs():
                    with gr.Tab(KIND_TABS["masks"], elem_id="tab-masks") as tab_masks:
                        handle_editor = _editor("Handle: paint what moves", "#eb2d2d", "handle-editor")
                        target_editor = _editor("Target: paint where it goes", "#286eff", "target-editor")
                        add_masks_button = gr.Button("Add pair", variant="primary", elem_id="add-masks")
                    with gr.Tab(KIND_TABS["polygons"], elem_id="tab-polygons") as tab_polygons:
                        sides = gr.Radio(list(POLYGON_SIDES), value=next(iter(POLYGON_SIDES)), label="Polygons")
                        gr.Markdown("Click the handle polygon's vertices on the preview, then the target's, "
                                    "in corresponding order (handle vertex i goes to target vertex i).")
                        add_polygons_button = gr.Button("Add pair", variant="primary", elem_id="add-polygons")
                    with gr.Tab(KIND_TABS["region_points"], elem_id="tab-region-points") as tab_region_points:
                        region_editor = _editor("Region: paint the part to move", "#eb2d2d", "region-editor")
                        gr.Markdown("Then click handle -> target point pairs on the preview, handle points inside "
                                    "the region: the points drag the region.")
                        add_region_points_button = gr.Button("Add pair", variant="primary", elem_id="add-region-points")
                    with gr.Tab(KIND_TABS["points"], elem_id="tab-points") as tab_points:
                        gr.Markdown("Click a handle point, then its target, on the preview; repeat for more pairs. "
                                    "A disk or square around each handle point moves, unchanged.")
                        radius = gr.Slider(0, 128, DEFAULT_POINT_RADIUS, step=1, label="Radius (px)")
                        shape = gr.Radio(list(POINT_SHAPES), value=PointPairs.shape, label="Shape")
                        add_points_button = gr.Button("Add pair", variant="primary", elem_id="add-points")
                with gr.Row():
                    undo_pair_button = gr.Button("Undo pair")
                    clear_button = gr.Button("Clear all pairs")
                with gr.Accordion("Editable area (optional: nothing painted = the whole photo may change)",
                                  open=False):
                    mask_editor = _editor("Paint where the photo may change", "#2dc850", "mask-editor")
            with gr.Column():
                preview = gr.Image(label="Preview (click here for polygon vertices and points)", type="pil",
                                   format="png", interactive=False, elem_id="preview")
                with gr.Row():
                    handle_text = gr.Textbox(label="Handle points / vertices (x,y; x,y; ...)", elem_id="handle-text")
                    target_text = gr.Textbox(label="Target points / vertices (x,y; x,y; ...)", elem_id="target-text")
                undo_click_button = gr.Button("Undo click")
                summary = gr.Markdown("Upload a photo to start.", elem_id="summary")
                copy_pasted = gr.Image(label="Copy-paste preview (the pixels moved: CP then Encode's input)",
                                       type="pil", format="png", interactive=False)
        with gr.Accordion("Settings (defaults: the reference's)", open=False):
            with gr.Row():
                prompt = gr.Textbox(label="Prompt", value="")
                method = gr.Dropdown([(name, key) for key, name in METHODS.items()], value=defaults.method,
                                     label="Method")
                paste_schedule = gr.Dropdown(list(PASTE_SCHEDULES), value=defaults.paste_schedule,
                                             label="Copy-paste schedule")
                attention_swap = gr.Checkbox(value=defaults.attention_swap.enabled, label="Attention swap")
            with gr.Row():
                steps = gr.Slider(2, 100, defaults.steps, step=1, label="Steps")
                start_t = gr.Slider(0.05, 0.95, defaults.start_t, step=0.05,
                                    label="start_t (how deep the inversion goes)")
                noise_scale = gr.Slider(0.0, 1.0, defaults.noise_scale, step=0.05, label="Handle noise")
                seed = gr.Number(defaults.seed, precision=0, label="Seed")
                ip_scale = gr.Slider(0.0, 1.0, defaults.ip_scale, step=0.05, label="Image-prompt scale" + (
                    "" if pipe.image_prompter is not None else " (no effect: started without --ip-adapter)"))
        drag_button = gr.Button("Drag", variant="primary", elem_id="drag")
        drag_time = gr.Markdown(elem_id="drag-time")
        with gr.Row():
            input_image = gr.Image(label="Input", type="pil", format="png", interactive=False)
            result_image = gr.Image(label="Result (download: PNG)", type="pil", format="png", interactive=False,
                                    buttons=["download"], elem_id="result")

        view_inputs = [session, kind, sides, handle_text, target_text, radius, shape]
        view_outputs = [preview, copy_pasted, summary]

        def refreshing(event):
            return event.success(render, view_inputs, view_outputs, api_visibility="private", show_progress="hidden")

        uploaded = photo_file.upload(load, photo_file, [session, status, handle_text, target_text, clicks,
                                                        handle_editor, target_editor, region_editor, mask_editor],
                                     api_name="load_photo")
        refreshing(uploaded)
        for tab, name in ((tab_masks, "masks"), (tab_polygons, "polygons"), (tab_region_points, "region_points"),
                          (tab_points, "points")):
            refreshing(tab.select(functools.partial(lambda name: name, name), None, kind, api_visibility="private"))
        refreshing(add_masks_button.click(add_masks, [session, handle_editor, target_editor], [session, status],
                                          api_name="add_masks")).success(
            lambda s: (editor_value(s.photo),) * 2, session, [handle_editor, target_editor], api_visibility="private")
        refreshing(add_polygons_button.click(add_polygons, [session, sides, handle_text, target_text],
                                             [session, status, handle_text, target_text, clicks],
                                             api_name="add_polygons"))
        refreshing(add_region_points_button.click(
            add_region_points, [session, region_editor, handle_text, target_text],
            [session, status, handle_text, target_text, clicks], api_name="add_region_points")).success(
            lambda s: editor_value(s.photo), session, region_editor, api_visibility="private")
        refreshing(add_points_button.click(add_points, [session, handle_text, target_text, radius, shape],
                                           [session, status, handle_text, target_text, clicks], api_name="add_points"))
        refreshing(undo_pair_button.click(undo_pair, session, [session, status], api_name="undo_pair"))
        refreshing(clear_button.click(clear_pairs, session, [session, status, handle_text, target_text, clicks],
                                      api_name="clear"))
        preview.select(click, [kind, sides, clicks], [clicks, handle_text, target_text], api_visibility="private",
                       trigger_mode="multiple", concurrency_limit=1, concurrency_id="clicks", show_progress="hidden")
        undo_click_button.click(undo_click, [kind, clicks], [clicks, handle_text, target_text],
                                api_visibility="private", concurrency_id="clicks", show_progress="hidden")
        for box in (handle_text, target_text):  # typed coordinates
            box.input(lambda h, t: (h, t), [handle_text, target_text], clicks, api_visibility="private",
                      concurrency_id="clicks", show_progress="hidden")
        for control in (handle_text, target_text, sides, radius, shape):
            control.change(render, view_inputs, view_outputs, api_visibility="private", trigger_mode="always_last",
                           show_progress="hidden")
        app.load(render, view_inputs, view_outputs, api_name="preview")  # also the API's way to read the preview
        export_button.click(export_regions, session, export_file, api_name="export")
        refreshing(import_files.upload(import_regions, [session, import_files], [session, status],
                                       api_name="import"))
        settings = [steps, start_t, noise_scale, seed, method, ip_scale, paste_schedule, attention_swap]
        drag_button.click(drag, [session, mask_editor, prompt, *settings], [input_image, result_image, drag_time],
                          api_name="drag", concurrency_limit=1, concurrency_id="model")
        # the drag canvas: a new photo, its inversion at once (and again when a setting it depends on changes)
        uploaded.success(lambda s: photo_message(s.photo, advice()), session, canvas, api_visibility="private",
                         show_progress="hidden").then(
            invert_ahead, [session, prompt, *settings], inversion_status, api_visibility="private",
            concurrency_limit=1, concurrency_id="model")
        for control in (prompt, steps, start_t, seed, method, ip_scale):
            control.change(invert_ahead, [session, prompt, *settings], inversion_status, api_visibility="private",
                           concurrency_limit=1, concurrency_id="model", trigger_mode="always_last")
        refreshing(canvas.release(sync_canvas, [session, canvas], session, api_visibility="private",
                                  trigger_mode="always_last", show_progress="hidden"))
        for event, moving in ((canvas.release, False), (canvas.input, True)):  # input: live mode's mid-drag requests
            event(functools.partial(edit_request, moving), [session, canvas, auto_run, mask_editor, prompt, *settings],
                  canvas, api_visibility="private", concurrency_limit=1, concurrency_id="model",
                  trigger_mode="always_last", show_progress="hidden")  # the canvas says "editing..."

        def forget_session(request: gr.Request) -> None:
            """A closed tab's photo and pairs are freed at once (Gradio would keep them an hour, for a reconnect)."""
            app.state_holder.delete_state(request.session_hash)

        app.unload(forget_session)
    return app


def _editor(label: str, colour: str, elem_id: str) -> gr.ImageEditor:
    """A paint canvas over the photo: one brush colour, an eraser, no crop/resize (pixels must stay put)."""
    return gr.ImageEditor(label=label, type="numpy", image_mode="RGBA", format="png", sources=(), transforms=(),
                          layers=False, height=360, brush=gr.Brush(colors=[colour], color_mode="fixed"),
                          elem_id=elem_id)


# Gradio's default fonts come from a CDN; the page must work offline.
THEME_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


# What the clients of one server can make it hold, beside the per-file caps (uploads.py): the sessions
# kept in memory (the least recently used goes first: its tab must upload again), each a photo of at
# most upload_max_side and MAX_PAIRS pairs; files uploaded and served, deleted an hour after they came.
MAX_SESSIONS = 64
CACHE_CLEANUP = (600, 3600)  # Gradio's delete_cache: (every, older than) in seconds


def launch(pipe: RegionDragPipeline, host: str = "127.0.0.1", port: int = 7860, max_side: Optional[int] = None,
           block: bool = True, live_max_s: Optional[float] = None) -> gr.Blocks:
    """Serve the page on host:port (one Drag at a time on the model, the others queued)."""
    app = build_app(pipe, max_side, live_max_s)
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=host, server_port=port, share=False, show_error=True, prevent_thread_lock=not block,
               quiet=not block, theme=gr.themes.Default(**THEME_FONTS), footer_links=["api"],
               max_file_size=MAX_UPLOAD_BYTES, state_session_capacity=MAX_SESSIONS)
    return app
