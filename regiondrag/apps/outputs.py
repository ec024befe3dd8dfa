"""Writing results: output paths checked before any work, images written atomically."""
from __future__ import annotations

import io
import os
import secrets
import stat
from pathlib import Path

from PIL import Image

from ..image_io import ImageError, PathLike

# The temporary file's name is the output's and 14 bytes more: f".{name}.{8 hex digits}.tmp".
TEMPORARY_NAME_EXTRA = 14


def check_output_path(path: PathLike) -> str:
    """PIL's format for an output path, checked before any work: an extension PIL can write
    RGB to, a file name (not a folder, nor text ending in a slash) short enough for the file
    system, not an existing read-only file, in a folder that exists (or can be made) and is
    writable."""
    text = os.fspath(path)
    if "\0" in text:
        raise ImageError(f"output path {text!r} has a NUL byte")
    if text.endswith(("/", os.sep)):  # Path() would drop the slash and write a file by that name
        raise ImageError(f"output {text} ends with a slash, so it names a folder; give a file name such as "
                         f"{Path(text) / 'result.png'}, or drop the slash")
    path = Path(path)
    try:
        folder = next(p for p in path.absolute().parents if p.exists())
        limit = os.pathconf(folder, "PC_NAME_MAX") - TEMPORARY_NAME_EXTRA
        if len(os.fsencode(path.name)) > limit:
            raise ImageError(f"output file name {path.name[:40]}... is {len(os.fsencode(path.name))} bytes; the "
                             f"file system takes at most {limit} here (with room for the temporary file written "
                             f"first); choose a shorter name")
        if path.is_dir():
            raise ImageError(f"output {path} is a folder; give a file name such as {path / 'result.png'}")
        if path.exists() and not path.stat().st_mode & 0o222:
            raise ImageError(f"output {path} exists and is read-only; refusing to replace it: make it writable, "
                             f"or choose another output path")
    except OSError as e:  # a path too long for the file system, a component that is a file, ...
        raise ImageError(f"cannot write {path}: {e.strerror or e}") from None
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"unknown image extension {path.suffix!r} for {path}; use .png or .jpg")
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except Exception:  # noqa: BLE001 - PIL signals "cannot write this" in many ways
        raise ImageError(f"cannot write an RGB image as {fmt} ({path.suffix}); use .png or .jpg") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ImageError(f"cannot write {path}: {folder} is not a writable folder")
    return fmt


def save_image_atomic(image: Image.Image, path: PathLike) -> Path:
    """Write to a temporary file beside `path`, then rename: readers never see half a file,
    and an interrupted write (an exception, Ctrl-C, or a signal the CLI turns into one)
    leaves no file behind. A new file gets the usual permissions (0666 less the umask); a
    replaced one keeps its own (a read-only one is refused by check_output_path)."""
    fmt = check_output_path(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # named before it exists: always removable
    try:
        with open(tmp, "xb") as f:
            image.save(f, format=fmt)
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ImageError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path
