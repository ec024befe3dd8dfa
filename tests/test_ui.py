"""The browser editor through its own API: gradio_client against a server started here on 127.0.0.1.

The server runs in this process (so a test can look at the shared pipeline), with the tiny
random-weight model and a 128 px working size. Each test opens its own client, i.e. its own
browser-tab session. A drag's result is compared with `RegionDragPipeline.edit` of the same
regions built directly from the library, so a pair lost or altered on its way through the page
fails the test; previews are compared with `python -m regiondrag preview` of the exported JSON.
"""
import socket
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from regiondrag.apps import ui
from regiondrag.attention_swap import AttentionSwap
from regiondrag.apps.cli import main as cli_main
from regiondrag.pipeline import RegionDragPipeline
from regiondrag.regions import MaskPair, PointPairs, PolygonPair, RegionPoints
from conftest import ALLOCATION_FAILURES, free_port

ROOT = Path(__file__).resolve().parents[1]
CHELSEA = ROOT / "examples" / "chelsea.png"  # 451 x 300
MAX_SIDE = 128                                # working size 128 x 80, latent 16 x 10
TRIANGLE, QUAD = list(ui.POLYGON_SIDES)
# prompt, steps, start_t, handle noise, seed, method, image-prompt scale, paste schedule, attention swap
SETTINGS = ("", 10, 0.5, 1.0, 42, "encode_then_cp", 0.5, "every_step", True)
NO_MASK = {"background": None, "layers": [], "composite": None, "id": None}


@pytest.fixture(scope="module")
def server(tiny_sd_folder):
    pipe = RegionDragPipeline.from_pretrained(str(tiny_sd_folder), device="cpu", dtype=torch.float32)
    edit, lock, counts = pipe.edit, threading.Lock(), SimpleNamespace(active=0, peak=0)

    def counted_edit(*args, **kwargs):  # how many edits run at once on the shared model
        with lock:
            counts.active += 1
            counts.peak = max(counts.peak, counts.active)
        try:
            time.sleep(0.3)  # long enough for a second, unqueued edit to overlap
            return edit(*args, **kwargs)
        finally:
            with lock:
                counts.active -= 1

    pipe.edit = counted_edit
    port = free_port()
    app = ui.launch(pipe, "127.0.0.1", port, max_side=MAX_SIDE, block=False)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", pipe=pipe, edit=edit, counts=counts, app=app)
    app.close()


@pytest.fixture
def client(server):
    return Client(server.url, verbose=False)


def load(client, photo=CHELSEA) -> str:
    note, handle_text, target_text = client.predict(handle_file(str(photo)), api_name="/load_photo")[:3]
    assert (handle_text, target_text) == ("", "")
    return note


def rect(x0, y0, x1, y1, size=(451, 300)) -> np.ndarray:
    mask = np.zeros(size[::-1], bool)
    mask[y0:y1, x0:x1] = True
    return mask


def painted(tmp_path: Path, name: str, mask: np.ndarray) -> dict:
    """An ImageEditor value as the browser sends it: the photo, and one RGBA layer painted where mask is."""
    layer = np.zeros(mask.shape + (4,), np.uint8)
    layer[mask] = (235, 45, 45, 255)
    Image.fromarray(layer).save(tmp_path / f"{name}.png")
    return {"background": handle_file(str(CHELSEA)), "layers": [handle_file(str(tmp_path / f"{name}.png"))],
            "composite": None, "id": None}


def text(points) -> str:
    return "; ".join(f"{x},{y}" for x, y in points)


def drag(client, mask=NO_MASK, settings=SETTINGS) -> tuple[Image.Image, str]:
    _, result, message = client.predict(mask, *settings, api_name="/drag")
    image = Image.open(result)
    image.load()
    return image, message


def library_edit(server, regions, mask=None, settings=SETTINGS) -> np.ndarray:
    """What the library makes of these regions with the page's settings."""
    prompt, steps, start_t, noise, seed, method, ip_scale, schedule, swap = settings
    return np.asarray(server.edit(Image.open(CHELSEA), regions, prompt, mask, steps=steps, start_t=start_t,
                                  noise_scale=noise, seed=seed, method=method, ip_scale=ip_scale,
                                  paste_schedule=schedule, attention_swap=AttentionSwap(enabled=swap),
                                  max_side=MAX_SIDE, progress=False).image)


def render(client, sides=TRIANGLE, handle="", target="", radius=16, shape="disk"):
    preview, copy_pasted, summary = client.predict(sides, handle, target, radius, shape, api_name="/preview")
    return np.asarray(Image.open(preview).convert("RGB")), copy_pasted, summary


# pairs of every kind on chelsea: how the page gets them, and the same pair built by the library
MASK_H, MASK_T = rect(150, 100, 230, 180), rect(250, 110, 330, 190)
POLY_H, POLY_T = [(100, 100), (200, 100), (150, 180)], [(120, 60), (240, 70), (170, 170)]
REGION = rect(150, 100, 260, 210)
RP_H, RP_T = [(200, 150), (240, 190)], [(230, 140), (280, 180)]
PT_H, PT_T = [(200, 150)], [(270, 160)]


def add(client, kind: str, tmp_path: Path):
    """Add one pair of `kind` through the page's API; returns the library's own version of it."""
    if kind == "masks":
        note = client.predict(painted(tmp_path, "h", MASK_H), painted(tmp_path, "t", MASK_T), api_name="/add_masks")
        pair = MaskPair(MASK_H, MASK_T)
    elif kind == "polygons":
        note, *cleared = client.predict(TRIANGLE, text(POLY_H), text(POLY_T), api_name="/add_polygons")
        pair = PolygonPair(POLY_H, POLY_T)
    elif kind == "region_points":
        note, *cleared = client.predict(painted(tmp_path, "r", REGION), text(RP_H), text(RP_T),
                                        api_name="/add_region_points")
        pair = RegionPoints(REGION, RP_H, RP_T)
    else:
        note, *cleared = client.predict(text(PT_H), text(PT_T), 30, "square", api_name="/add_points")
        pair = PointPairs(PT_H, PT_T, 30, "square")
    assert note.startswith("Added pair") and ui.KIND_TABS[kind].lower() in note, note
    return pair


# -- every region kind, and mixed kinds, drag to an image of the photo's size ---------------------------

@pytest.mark.parametrize("kinds", [["masks"], ["polygons"], ["region_points"], ["points"],
                                   ["masks", "polygons", "region_points", "points"]])
def test_drag_each_kind(server, client, tmp_path, kinds):
    load(client)
    regions = [add(client, kind, tmp_path) for kind in kinds]
    result, message = drag(client)
    assert result.format == "PNG" and result.size == (451, 300) and message.startswith("Dragged in"), message
    assert np.array_equal(np.asarray(result), library_edit(server, regions))


def test_every_setting_reaches_the_edit(server, client, tmp_path):
    load(client)
    regions = [add(client, "polygons", tmp_path), add(client, "points", tmp_path)]
    settings = ("the cat", 8, 0.75, 0.5, 7, "cp_then_encode", 0.3, "single_step", False)
    result, _ = drag(client, settings=settings)
    assert np.array_equal(np.asarray(result), library_edit(server, regions, settings=settings))
    assert not np.array_equal(np.asarray(result), library_edit(server, regions))


def test_editable_mask_keeps_the_photo_outside(server, client, tmp_path):
    load(client)
    add(client, "points", tmp_path)
    editable = rect(150, 100, 330, 220)
    result, _ = drag(client, mask=painted(tmp_path, "mask", editable))
    photo, edited = np.asarray(Image.open(CHELSEA).convert("RGB")), np.asarray(result)
    assert np.array_equal(edited[~editable], photo[~editable])
    assert not np.array_equal(edited[editable], photo[editable])


def test_second_drag_reuses_the_cached_inversion(server, client, tmp_path):
    server.pipe.clear_cache()
    load(client)
    add(client, "polygons", tmp_path)
    _, first = drag(client)
    add(client, "points", tmp_path)  # new regions, same photo and settings
    _, second = drag(client)
    assert "cached inversion" not in first and "inversion" in first, first
    assert "cached inversion of this photo was reused" in second, second
    other = ("", 10, 0.6, *SETTINGS[3:])  # another start_t inverts afresh
    _, third = drag(client, settings=other)
    assert "cached inversion" not in third, third


# -- export / import in the CLI's format -------------------------------------------------------------

def cli_preview(image: Path, regions: Path, out: Path) -> np.ndarray:
    assert cli_main(["preview", "--image", str(image), "--regions", str(regions), "--out", str(out),
                     "--max-side", str(MAX_SIDE)]) == 0
    return np.asarray(Image.open(out).convert("RGB"))


def test_export_then_import_matches_the_cli(client, tmp_path):
    load(client)
    for kind in ("masks", "polygons", "region_points", "points"):
        add(client, kind, tmp_path)
    drawn, _, summary = render(client)
    exported = Path(client.predict(api_name="/export"))
    with zipfile.ZipFile(exported) as z:
        z.extractall(tmp_path / "export")
        names = set(z.namelist())
    assert {ui.REGIONS_JSON, ui.PHOTO_PNG, "pair0_handle.png", "pair0_target.png", "pair2_region.png"} <= names
    # the CLI reads the exported JSON and draws what the page drew
    folder = tmp_path / "export"
    assert np.array_equal(cli_preview(folder / ui.PHOTO_PNG, folder / ui.REGIONS_JSON, tmp_path / "cli.png"), drawn)

    fresh = Client(client.src, verbose=False)  # another tab imports the file
    load(fresh)
    note = fresh.predict([handle_file(str(exported))], api_name="/import")
    assert note == f"Imported 4 pair(s) from {ui.REGIONS_JSON}."
    imported, _, imported_summary = render(fresh)
    assert np.array_equal(imported, drawn) and imported_summary == summary


def test_import_a_cli_region_file_with_its_mask(client, tmp_path):
    coffee = ROOT / "examples" / "coffee.png"
    load(client, coffee)
    note = client.predict([handle_file(str(ROOT / "examples" / "coffee.json")),
                            handle_file(str(ROOT / "examples" / "coffee_spoon.png"))], api_name="/import")
    assert note.startswith("Imported")
    drawn, copy_pasted, _ = render(client)
    assert np.array_equal(drawn, cli_preview(coffee, ROOT / "examples" / "coffee.json", tmp_path / "cli.png"))
    assert Image.open(copy_pasted).size == (128, 80)  # the working size: what CP then Encode inverts


# -- live preview -----------------------------------------------------------------------------------

def test_preview_marks_clicks_and_draws_pairs(client):
    load(client)
    photo = np.asarray(Image.open(CHELSEA).convert("RGB"))
    empty, copy_pasted, summary = render(client)
    assert np.array_equal(empty, photo) and copy_pasted is None and summary.startswith("No pairs yet")
    # half a polygon pair: only the clicked vertices are marked, no mapping yet
    half, _, _ = render(client, TRIANGLE, text(POLY_H), "")
    assert not np.array_equal(half, photo) and half[100, 100].tolist() != photo[100, 100].tolist()
    # an added pair: mapping drawn, and the copy-paste preview moved its pixels
    client.predict(text(PT_H), text(PT_T), 30, "square", api_name="/add_points")
    moved, copy_pasted, summary = render(client)
    assert "1. point pairs" in summary and "latent cells" in summary
    cp = np.asarray(Image.open(copy_pasted))
    work = np.asarray(Image.open(CHELSEA).resize((128, 80), Image.BICUBIC))
    assert cp.shape == work.shape and not np.array_equal(cp, work)


def test_clicks_fill_polygons_then_alternate_points():
    def clicks(kind, points, sides=TRIANGLE):
        state = ui.NO_CLICKS
        for x, y in points:
            state = ui.click(kind, sides, state, SimpleNamespace(index=[x, y]))[0]
        return state

    six = [(i, 10 * i) for i in range(1, 7)]
    assert clicks("polygons", six) == ("1,10; 2,20; 3,30", "4,40; 5,50; 6,60")
    assert clicks("polygons", six + [(7, 70), (8, 80)], QUAD) == ("1,10; 2,20; 3,30; 4,40", "5,50; 6,60; 7,70; 8,80")
    assert clicks("points", six[:3]) == ("1,10; 3,30", "2,20")
    assert ui.undo_click("points", clicks("points", six[:3]))[0] == ("1,10", "2,20")
    assert ui.undo_click("points", ("1,10", "2,20"))[0] == ("1,10", "")
    assert ui.undo_click("polygons", clicks("polygons", six[:4]))[0] == ("1,10; 2,20; 3,30", "")
    assert ui.undo_click("polygons", ("1,10; 2,20", ""))[0] == ("1,10", "")


# -- bad input gets the documented one-line message --------------------------------------------------

def assert_message(call, *fragments):
    with pytest.raises(AppError) as e:
        call()
    message = str(e.value)
    assert "Traceback" not in message and "\n" not in message.strip(), message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_inputs(client, tmp_path):
    assert_message(lambda: client.predict(TRIANGLE, text(POLY_H), text(POLY_T), api_name="/add_polygons"),
                   "upload a photo first")
    not_an_image = tmp_path / "photo.png"
    not_an_image.write_text("hello")
    assert_message(lambda: load(client, not_an_image), "cannot read photo.png as an image", "PNG or JPEG")
    load(client)
    assert_message(lambda: drag(client), "no pairs to drag", "Add pair")
    empty = {"background": handle_file(str(CHELSEA)), "layers": [], "composite": None, "id": None}
    assert_message(lambda: client.predict(empty, painted(tmp_path, "t", MASK_T), api_name="/add_masks"),
                   "a target is painted but no handle")
    assert_message(lambda: client.predict(TRIANGLE, "1,1; 60,1", "5,5; 70,5", api_name="/add_polygons"),
                   "handle has 2 vertices; a polygon pair needs 3 (triangle) or 4 (quadrilateral)")
    assert_message(lambda: client.predict(TRIANGLE, "10,10; 50,50; 90,90", text(POLY_T), api_name="/add_polygons"),
                   "handle polygon is degenerate", "collinear")
    assert_message(lambda: client.predict(TRIANGLE, text(POLY_H), "", api_name="/add_polygons"),
                   "no target vertices yet", "click the target polygon's 3 vertices")
    assert_message(lambda: client.predict(QUAD, text(POLY_H), "", api_name="/add_polygons"),
                   "the handle has 3 of its 4 vertices; click 1 more")
    assert_message(lambda: client.predict("500,10", "20,20", 16, "disk", api_name="/add_points"),
                   "handle point 0 (500, 10) lies outside the 451x300 image")
    assert_message(lambda: client.predict("20,2o", "30,30", 16, "disk", api_name="/add_points"),
                   "'20,2o' is not a point", "x,y separated by ;")
    assert_message(lambda: client.predict(painted(tmp_path, "r", REGION), "10,10", "20,20",
                                          api_name="/add_region_points"), "lies outside the region")
    bad_json = tmp_path / "regions.json"
    bad_json.write_text('{"pairs": [{"kind": "points", "handle": [[10, 10]]}]}')
    assert_message(lambda: client.predict([handle_file(str(bad_json))], api_name="/import"),
                   "pair 0 (points): missing key(s) target")
    not_a_zip = tmp_path / "regions.zip"
    not_a_zip.write_text("hello")
    assert_message(lambda: client.predict([handle_file(str(not_a_zip))], api_name="/import"),
                   "regions.zip is not a readable zip file")
    assert render(client)[2].startswith("No pairs yet")  # nothing half-added by the failures


@pytest.mark.parametrize("fail, size", ALLOCATION_FAILURES)
def test_running_out_of_memory_is_one_line_and_the_server_goes_on(server, client, monkeypatch, fail, size):
    """An edit that runs out of memory (CUDA, torch's CPU allocator, numpy) is one line naming the size and
    what the server's operator can change; the memory is given back, and the next drag works."""
    load(client)
    add(client, "points", None)
    given_back = []
    monkeypatch.setattr(ui, "give_memory_back", lambda: given_back.append(True))
    monkeypatch.setattr(server.pipe, "edit", lambda *args, **kwargs: fail())
    assert_message(lambda: drag(client), f"out of memory on the server: an allocation of {size} failed",
                   "--max-side", "--dtype")
    assert given_back == [True]
    monkeypatch.undo()
    assert drag(client)[0].size == Image.open(CHELSEA).size


def test_large_photo_is_resized_and_the_user_told(client, tmp_path):
    big = tmp_path / "big.png"
    Image.open(CHELSEA).resize((3000, 1995)).save(big)
    note = load(client, big)
    assert "much larger than the 128 px the model works at" in note and "resized to 1024x681" in note, note
    assert render(client)[0].shape == (681, 1024, 3)


def test_a_photo_with_too_many_pixels_says_so(client, tmp_path):
    """A valid photo over the pixel cap was reported as "cannot read ... as an image"."""
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 8000)).save(huge)  # 72 MP, a few KB
    assert_message(lambda: load(client, huge), "huge.png is 9000x8000, more than 67108864 pixels; downscale it")


def test_an_upload_over_the_cap_is_refused_with_the_limit(server, client, tmp_path):
    """Any upload was accepted and stored (100 MB went to the server's temporary folder)."""
    import httpx

    from regiondrag.apps.uploads import MAX_UPLOAD_BYTES

    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(MAX_UPLOAD_BYTES + 1)  # sparse: no disk here, every byte sent
    with pytest.raises(ValueError, match=f"exceeds the maximum file size of {MAX_UPLOAD_BYTES} bytes"):
        load(client, big)  # the page (and gradio_client) read the cap from the server and refuse to send
    with open(big, "rb") as f:  # a client that sends anyway: the server stops reading at the cap
        answer = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("big.png", f)}, timeout=60)
    assert answer.status_code == 413 and f"maximum allowed size of {MAX_UPLOAD_BYTES} bytes" in answer.text


def test_closing_a_tab_frees_its_session_at_once(server, client):
    """A closed tab's photo and pairs stayed in the server's memory for an hour."""
    import httpx

    load(client)
    sessions = server.app.state_holder.session_data
    assert any(isinstance(v, ui.Session) and v.photo is not None for v in sessions[client.session_hash].state_data.values())
    with httpx.stream("GET", f"{server.url}gradio_api/heartbeat/{client.session_hash}", timeout=30) as beat:
        next(beat.iter_lines())  # the page's heartbeat is open: the tab is alive ...
    deadline = time.monotonic() + 30  # ... and closed: the unload event runs in the background
    while sessions[client.session_hash].state_data and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sessions[client.session_hash].state_data == {}


def test_exports_do_not_pile_up_on_the_server(tmp_path, monkeypatch):
    """Each export left a folder with its zip behind for good; Gradio serves its own copy of it."""
    monkeypatch.setattr(ui, "EXPORTS", tmp_path / "exports")
    session = ui.Session(Image.open(CHELSEA).convert("RGB"), [PointPairs(PT_H, PT_T)], MAX_SIDE)
    first = Path(ui.export_regions(session))
    assert sorted(zipfile.ZipFile(first).namelist()) == ["photo.png", "regions.json"]
    second = Path(ui.export_regions(session))
    assert first.exists() and second.exists()  # a minute for Gradio to copy it
    monkeypatch.setattr(ui, "EXPORT_KEEP_S", -1)
    third = Path(ui.export_regions(session))
    assert list((tmp_path / "exports").iterdir()) == [third.parent]


# -- several tabs, one model ----------------------------------------------------------------------------

def test_tabs_keep_their_own_pairs(client, server, tmp_path):
    other = Client(server.url, verbose=False)
    load(client)
    load(other)
    add(client, "polygons", tmp_path)
    assert render(other)[2].startswith("No pairs yet")
    assert_message(lambda: drag(other), "no pairs to drag")
    assert "1. polygons" in render(client)[2]


def test_one_edit_at_a_time_on_the_model(server, tmp_path):
    clients = [Client(server.url, verbose=False) for _ in range(2)]
    for c in clients:
        load(c)
        add(c, "points", tmp_path)
    server.counts.peak = 0
    jobs = [c.submit(NO_MASK, *SETTINGS, api_name="/drag") for c in clients]
    results = [Image.open(job.result(timeout=300)[1]) for job in jobs]
    assert [r.size for r in results] == [(451, 300)] * 2
    assert server.counts.peak == 1


# -- the command --------------------------------------------------------------------------------------

def test_ui_command_on_a_taken_port(capsys, tiny_sd_folder):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli_main(["ui", "--weights", str(tiny_sd_folder), "--device", "cpu", "--port", str(port)])
    last = capsys.readouterr().err.splitlines()[-1]  # after the loaders' progress bars
    assert code == 2 and last.startswith(f"error: cannot serve on 127.0.0.1:{port}"), last
    assert "choose another --port" in last and "Traceback" not in last
