"""Writing results: output paths checked before any work, images written atomically."""
from __future__ import annotations

import io
import os
import secrets
from pathlib import Path

from PIL import Image

from ..image_io import ImageError, PathLike


def check_output_path(path: PathLike) -> str:
    """PIL's format for an output path, checked before any work: an extension PIL can write
    RGB to, not a folder, in a folder that exists (or can be made) and is writable."""
    path = Path(path)
    if "\0" in str(path):
        raise ImageError(f"output path {str(path)!r} has a NUL byte")
    if path.is_dir():
        raise ImageError(f"output {path} is a folder; give a file name such as {path / 'result.png'}")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"unknown image extension {path.suffix!r} for {path}; use .png or .jpg")
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except Exception:  # noqa: BLE001 - PIL signals "cannot write this" in many ways
        raise ImageError(f"cannot write an RGB image as {fmt} ({path.suffix}); use .png or .jpg") from None
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ImageError(f"cannot write {path}: {folder} is not a writable folder")
    return fmt


def save_image_atomic(image: Image.Image, path: PathLike) -> Path:
    """Write to a temporary file beside `path`, then rename: readers never see half a file,
    and an interrupted write (an exception, Ctrl-C, or a signal the CLI turns into one)
    leaves no file behind. The file gets the usual permissions (0666 less the umask)."""
    path = Path(path)
    fmt = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # named before it exists: always removable
    try:
        with open(tmp, "xb") as f:
            image.save(f, format=fmt)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ImageError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path
