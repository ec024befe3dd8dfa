"""What the browser editor takes from a client: the caps on uploads, and *Import regions* unpacked safely.

An import is a region .json with the mask PNGs it names, or a zip of them (as *Export regions* writes:
regions.json, its masks, photo.png). A zip is checked before anything is unpacked: at most
MAX_IMPORT_FILES members, declaring at most MAX_IMPORT_BYTES in all, every name relative and inside
the zip (no absolute path, no '..'). Then only what the import needs is written: the one region
file, and the mask files it names, each read for at most what is left of MAX_IMPORT_BYTES (a member
that unpacks to more than it declares is cut off there); the region file's mask names must stay
inside the import too. Anything else in the zip (photo.png) is never unpacked.
"""
from __future__ import annotations

import contextlib
import lzma
import posixpath
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Sequence

from ..files import read_bounded
from ..regions import MAX_PAIRS
from .region_file import MAX_REGION_FILE_BYTES, mask_files, read_region_file

# One uploaded file (Gradio's max_file_size): a photo from a 61 MP camera is ~30 MB as JPEG.
MAX_UPLOAD_BYTES = 64 * 2**20
# An import, unpacked: the region file and its masks (each pair names at most two), plus photo.png.
MAX_IMPORT_FILES = 2 * MAX_PAIRS + 2
MAX_IMPORT_BYTES = 64 * 2**20
# the compression methods zipfile unpacks (stored, deflate, bzip2, LZMA); an export writes deflate
UNPACKED_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


class UploadError(ValueError):
    """An upload the editor refuses; the message says why and what to upload instead."""


Reader = Callable[[int], bytes]  # at most n + 1 bytes of one file of the import


def unpack_import(uploads: Sequence[str], folder: Path) -> Path:
    """Write the import's region file, and the mask files it names, into `folder`; its path."""
    with contextlib.ExitStack() as stack:
        files: dict[str, Reader] = {}
        for upload in map(Path, uploads):
            if upload.suffix.lower() == ".zip":
                files.update(_zip_members(upload, stack))
            else:
                files[upload.name] = lambda cap, path=upload: read_bounded(  # Gradio's cap: the budget's check
                    path, MAX_UPLOAD_BYTES, f"uploaded file {path.name}", UploadError, "an upload holds")
        found = sorted(name for name in files if name.lower().endswith(".json"))
        if len(found) != 1:
            raise UploadError(f"found {len(found)} .json region files in the import; give exactly one")
        budget = _Budget()
        region_file = _write(folder, found[0], budget.read(files[found[0]], found[0], MAX_REGION_FILE_BYTES))
        root = posixpath.dirname(found[0])
        for mask in mask_files(read_region_file(region_file), Path(root)):
            name = posixpath.normpath(mask.as_posix())
            if mask.is_absolute() or name.startswith("../") or name == "..":
                raise UploadError(f"{found[0]} names the mask {mask}, outside the import; name masks by paths "
                                  f"relative to the region file, beside it")
            if name in files and not (folder / name).exists():
                _write(folder, name, budget.read(files[name], name, MAX_IMPORT_BYTES))
        return region_file


class _Budget:
    """What is left of MAX_IMPORT_BYTES as the import's files are unpacked."""

    def __init__(self):
        self.left = MAX_IMPORT_BYTES

    def read(self, reader: Reader, name: str, cap: int) -> bytes:
        data = reader(min(cap, self.left))
        if len(data) > min(cap, self.left):
            raise UploadError(f"the import unpacks to more than {min(cap, self.left)} bytes at {name} (at most "
                              f"{MAX_IMPORT_BYTES} in all); import the region file and its masks only")
        self.left -= len(data)
        return data


def _zip_members(path: Path, stack: contextlib.ExitStack) -> dict[str, Reader]:
    """A zip's files by name, checked before any is read (count, declared sizes, names)."""
    try:
        z = stack.enter_context(zipfile.ZipFile(path))
    except (zipfile.BadZipFile, OSError, EOFError):
        raise UploadError(f"{path.name} is not a readable zip file; export the regions again") from None
    members = [info for info in z.infolist() if not info.is_dir()]
    if len(members) > MAX_IMPORT_FILES:
        raise UploadError(f"{path.name} holds {len(members)} files; an import has at most {MAX_IMPORT_FILES} "
                          f"(a region file, its masks and the photo)")
    declared = sum(info.file_size for info in members)
    if declared > MAX_IMPORT_BYTES:
        raise UploadError(f"{path.name} unpacks to {declared} bytes; an import has at most {MAX_IMPORT_BYTES}")
    readers = {}
    for info in members:
        name = posixpath.normpath(info.filename)
        if info.filename.startswith("/") or "\\" in info.filename or name == ".." or name.startswith("../"):
            raise UploadError(f"{path.name} holds {info.filename!r}, a name outside the zip's folder; refusing to "
                              f"unpack it (export the regions again)")
        if name in readers:
            raise UploadError(f"{path.name} holds {name!r} twice; export the regions again")
        if info.flag_bits & 0x1:  # zipfile would ask for a password
            raise UploadError(f"{path.name} holds {info.filename!r} encrypted; export the regions again, without "
                              f"a password")
        if info.compress_type not in UNPACKED_METHODS:
            raise UploadError(f"{path.name} holds {info.filename!r} compressed by method {info.compress_type}, "
                              f"which cannot be unpacked here; export the regions again (deflate)")
        readers[name] = lambda cap, info=info: _read_member(z, info, path.name, cap)
    return readers


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, zip_name: str, cap: int) -> bytes:
    try:
        with z.open(info) as f:
            return f.read(cap + 1)
    # how a damaged member fails to unpack: a bad CRC or header (BadZipFile), corrupt data of each method
    # (deflate: zlib.error, bzip2: OSError, LZMA: LZMAError), truncation (EOFError)
    except (zipfile.BadZipFile, zlib.error, OSError, lzma.LZMAError, EOFError) as e:
        raise UploadError(f"cannot unpack {info.filename} from {zip_name} ({e}); export the regions again") from None


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as f:
        f.write(data)
    return path
