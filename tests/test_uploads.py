"""What a client can make the editor's server unpack and read: *Import regions* (regiondrag.apps.uploads).

Through the page's own import handler (`ui.import_regions`, a gr.Error for what it refuses), and
`unpack_import` for what lands on disk. Zips are written here member by member, so each test
knows exactly what the archive declares and holds.
"""
import io
import json
import zipfile

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from regiondrag.apps import ui, uploads
from regiondrag.apps.uploads import MAX_IMPORT_BYTES, MAX_IMPORT_FILES, UploadError, unpack_import

SIZE = (96, 64)
REGIONS = {"pairs": [{"kind": "masks", "handle": "handle.png", "target": {"polygon": [[60, 10], [90, 10], [90, 40]]}}]}


def mask_png() -> bytes:
    mask = np.zeros(SIZE[::-1], np.uint8)
    mask[10:40, 10:40] = 255
    png = io.BytesIO()
    Image.fromarray(mask).save(png, format="PNG")
    return png.getvalue()


def session() -> ui.Session:
    return ui.Session(Image.new("RGB", SIZE, (90, 120, 150)), [], 128)


def write_zip(path, members: dict, method: int = zipfile.ZIP_DEFLATED) -> str:
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return str(path)


def valid_members(**extra) -> dict:
    return {"regions.json": json.dumps(REGIONS), "handle.png": mask_png(), **extra}


def test_an_exported_style_zip_imports_its_pairs(tmp_path):
    new, note = ui.import_regions(session(), [write_zip(tmp_path / "r.zip", valid_members())])
    assert note == "Imported 1 pair(s) from regions.json."
    assert new.pairs[0].handle.sum() == 30 * 30 and new.pairs[0].handle[20, 20]


def test_a_zip_bomb_is_refused_before_anything_is_unpacked(tmp_path, monkeypatch):
    """A 2 MB zip unpacked to 2 GiB on the server's disk, and the import succeeded."""
    bomb = write_zip(tmp_path / "bomb.zip", valid_members(**{"photo.png": bytes(MAX_IMPORT_BYTES)}))
    assert (tmp_path / "bomb.zip").stat().st_size < MAX_IMPORT_BYTES // 500
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: opened.append(a) or pytest.fail("a member was read"))
    declared = MAX_IMPORT_BYTES + len(mask_png()) + len(json.dumps(REGIONS))
    with pytest.raises(gr.Error, match=f"bomb.zip unpacks to {declared} bytes; an import has at most {MAX_IMPORT_BYTES}"):
        ui.import_regions(session(), [bomb])
    assert opened == []


@pytest.mark.parametrize("name", ["../regions.json", "/tmp/regions.json", "a/../../regions.json", "..\\regions.json"])
def test_member_names_outside_the_zip_are_refused(tmp_path, name):
    """extractall silently rewrote such names (and the import went on); they are refused, saying which."""
    archive = write_zip(tmp_path / "slip.zip", {name: json.dumps(REGIONS), "handle.png": mask_png()})
    with pytest.raises(gr.Error, match="a name outside the zip's folder") as e:
        ui.import_regions(session(), [archive])
    assert f"slip.zip holds {name!r}" in e.value.message


def test_a_region_file_naming_a_mask_outside_the_import_is_refused(tmp_path):
    """The region file's mask paths resolved outside the temporary folder: the server read its own files."""
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "secret.png").write_bytes(mask_png())
    doc = {"pairs": [{**REGIONS["pairs"][0], "handle": "../../../server/secret.png"}]}
    archive = write_zip(tmp_path / "r.zip", {"regions.json": json.dumps(doc)})
    with pytest.raises(gr.Error, match="names the mask .*secret.png, outside the import"):
        ui.import_regions(session(), [archive])
    doc["pairs"][0]["handle"] = str(tmp_path / "server" / "secret.png")  # an absolute path
    archive = write_zip(tmp_path / "r.zip", {"regions.json": json.dumps(doc)})
    with pytest.raises(gr.Error, match="outside the import"):
        ui.import_regions(session(), [archive])


def test_only_the_region_file_and_its_masks_are_unpacked(tmp_path):
    archive = write_zip(tmp_path / "r.zip", valid_members(**{"photo.png": b"x" * 1000, "notes.txt": b"hi",
                                                             "sub/other.json.bak": b"{}"}))
    folder = tmp_path / "out"
    folder.mkdir()
    assert unpack_import([archive], folder) == folder / "regions.json"
    assert sorted(p.name for p in folder.rglob("*")) == ["handle.png", "regions.json"]
    assert (folder / "handle.png").read_bytes() == mask_png()


def test_a_zip_of_too_many_members_is_refused(tmp_path):
    members = valid_members(**{f"m{i}.png": b"" for i in range(MAX_IMPORT_FILES - 1)})
    with pytest.raises(gr.Error, match=f"holds {MAX_IMPORT_FILES + 1} files; an import has at most {MAX_IMPORT_FILES}"):
        ui.import_regions(session(), [write_zip(tmp_path / "many.zip", members)])


def test_what_is_read_stops_at_the_budget_whatever_was_declared(tmp_path, monkeypatch):
    """Loose files (and zip members, whose declared sizes may lie) are read for at most what is left."""
    (tmp_path / "regions.json").write_text(json.dumps(REGIONS))
    (tmp_path / "handle.png").write_bytes(mask_png())
    monkeypatch.setattr(uploads, "MAX_IMPORT_BYTES", len(json.dumps(REGIONS)) + len(mask_png()) - 1)
    with pytest.raises(UploadError, match=f"unpacks to more than {len(mask_png()) - 1} bytes at handle.png"):
        unpack_import([str(tmp_path / "regions.json"), str(tmp_path / "handle.png")], tmp_path / "out")
    monkeypatch.setattr(uploads, "MAX_IMPORT_BYTES", len(json.dumps(REGIONS)) + len(mask_png()))
    (tmp_path / "out2").mkdir()
    unpack_import([str(tmp_path / "regions.json"), str(tmp_path / "handle.png")], tmp_path / "out2")


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_a_damaged_member_is_one_line(tmp_path, method):
    """Each method's decoder fails its own way (zlib.error, OSError, LZMAError); each is the same one line."""
    path = tmp_path / "r.zip"
    write_zip(path, valid_members(), method)
    data = bytearray(path.read_bytes())
    at = data.index(b"handle.png") + len(b"handle.png") + 20  # inside the mask's compressed bytes
    data[at:at + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(gr.Error, match="cannot unpack handle.png from r.zip .*export the regions again"):
        ui.import_regions(session(), [str(path)])


def patched_headers(path, offsets: tuple[int, int], value: bytes) -> None:
    """Write `value` at a field of every member's local header and central-directory entry (their offsets)."""
    data = bytearray(path.read_bytes())
    for signature, offset in zip((b"PK\x03\x04", b"PK\x01\x02"), offsets):
        at = data.find(signature)
        while at >= 0:
            data[at + offset:at + offset + len(value)] = value
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offsets, value, message", [
    ((6, 8), b"\x01\x00", "holds 'regions.json' encrypted; export the regions again, without a password"),
    ((8, 10), b"\x63\x00", "holds 'regions.json' compressed by method 99, which cannot be unpacked")],
    ids=["encrypted", "method 99"])
def test_an_encrypted_or_unknown_method_member_is_refused_before_reading(tmp_path, offsets, value, message):
    path = tmp_path / "r.zip"
    write_zip(path, valid_members(), zipfile.ZIP_STORED)
    patched_headers(path, offsets, value)
    with pytest.raises(gr.Error, match=message):
        ui.import_regions(session(), [str(path)])
