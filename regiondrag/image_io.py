"""Reading photos of any mode (with caps), working sizes, converting to and from tensors.

Writing results is an application's: regiondrag.apps.outputs."""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from .files import read_bounded

PathLike = Union[str, os.PathLike]
ImageLike = Union[PathLike, Image.Image, np.ndarray]

# The reference UI scales the long side to 512 and floors both sides to multiples of 8.
MAX_SIDE = 512
# The VAE downsamples by 8: image sizes must be multiples of it, and a pixel (x, y) lies in latent
# cell (x // 8, y // 8) (reference: `scale=1/8`, `source // 8`).
LATENT_STRIDE = 8


# The most pixels an input image may have: above a full-frame camera's 61 MP, below what
# decoding and converting (~10 bytes a pixel) can hold comfortably. The model works at
# max_side anyway; a bigger file is refused before it is decoded (a decompression bomb
# declares a huge size in a few bytes).
MAX_IMAGE_PIXELS = 2**26
# The most bytes an image file may have: MAX_IMAGE_PIXELS stored uncompressed at 8 bytes a
# pixel (16-bit RGBA); the whole file is read (at most this plus one byte) before decoding.
MAX_IMAGE_FILE_BYTES = 2**29
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageError(ValueError):
    """An input image that cannot be used; the message says why and what to do."""


class ImageTooLargeError(ImageError):
    """A valid image with more pixels (or a file with more bytes) than the caps allow."""


def load_image(image: ImageLike) -> Image.Image:
    """Any readable photo as 8-bit RGB, upright as displayed (EXIF orientation applied):
    palette, grey, alpha (onto white), CMYK and 16-bit modes converted."""
    if not isinstance(image, (str, os.PathLike, Image.Image, np.ndarray)):
        raise ImageError(f"an image is a file path, a PIL image or a numpy array; got {type(image).__name__}")
    if isinstance(image, np.ndarray):
        image = array_to_pil(image)
    elif not isinstance(image, Image.Image):
        image = open_image(image, "image file")
    _check_size(image, "image")
    try:
        return _to_rgb(image)
    except ImageError:
        raise
    except ValueError as e:  # modes PIL reads but cannot convert (LAB, HSV, La ...)
        raise ImageError(f"cannot convert a {image.mode} image to RGB ({e}); save it as an RGB PNG or JPEG") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16/32-bit grey: rescale to 8 bits
        a = np.asarray(image, dtype=np.float64)
        if not np.isfinite(a).all():  # as for arrays: no value to give a NaN pixel
            raise ImageError(f"{image.mode} image has NaN or infinite pixels; save it with finite values")
        lo, hi = a.min(), a.max()
        image = Image.fromarray(((a - lo) / max(hi - lo, 1e-12) * 255).round().astype(np.uint8))
    if "A" in image.getbands() or "a" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")  # transparent pixels become white, not black
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_mask(path: PathLike, what: str = "mask") -> np.ndarray:
    """A mask file as (H, W) bool, by the one rule for every mask the project reads: where a
    pixel's alpha is non-zero if the file has an alpha channel, else where its luminance is."""
    image = open_image(path, f"{what} file")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    bands = image.getbands()
    if "A" in bands or "a" in bands:
        return np.asarray(image.getchannel("A" if "A" in bands else "a")) != 0
    return np.asarray(image if len(bands) == 1 else image.convert("L")) != 0


def open_image(path: PathLike, what: str) -> Image.Image:
    """Decode an image file (a regular file, read whole within MAX_IMAGE_FILE_BYTES), refusing sizes
    above MAX_IMAGE_PIXELS before decoding and PNGs whose checksums fail; upright."""
    data = read_bounded(path, MAX_IMAGE_FILE_BYTES, what, ImageError,
                        f"an image of at most {MAX_IMAGE_PIXELS} pixels takes", too_big=ImageTooLargeError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_size(image, f"{what} {path}")
            if data.startswith(PNG_SIGNATURE):
                check_png_checksums(data, f"{what} {path}")
            image.load()
            return ImageOps.exif_transpose(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"{what} {path} declares more than {MAX_IMAGE_PIXELS} pixels; downscale it") from None
    except Exception as e:  # noqa: BLE001 - a decoder given a hostile file can raise anything
        raise ImageError(f"cannot read {what} {path} as an image ({type(e).__name__}: {str(e)[:100]}); "
                         f"give a PNG or JPEG file") from None


def check_png_checksums(data: bytes, what: str) -> None:
    """Every chunk's CRC up to IEND. PIL checks those before the pixels but not the pixel data's own
    (IDAT): a PNG damaged there decodes to garbage without a word. A truncated file is the decoder's."""
    view, pos = memoryview(data), len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 12 + length  # length, type, data, crc
        if end > len(data):
            return
        kind = bytes(view[pos + 4:pos + 8])
        if zlib.crc32(view[pos + 4:end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            raise ImageError(f"{what} is damaged: the checksum of its {kind.decode('latin-1')!r} chunk at byte {pos} "
                             f"does not match its data (a broken download or copy?); get the file again")
        if kind == b"IEND":
            return
        pos = end


def _check_size(image: Image.Image, what: str) -> None:
    if image.width < 1 or image.height < 1:
        raise ImageError(f"{what} has no pixels ({image.width}x{image.height})")
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(f"{what} is {image.width}x{image.height}, more than {MAX_IMAGE_PIXELS} pixels; "
                         f"downscale it (the model works at a long side of {MAX_SIDE} by default)")


def array_to_pil(a: np.ndarray) -> Image.Image:
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.dtype.kind not in "biuf":
        raise ImageError(f"an image array must be numbers of shape (H, W), (H, W, 3) or (H, W, 4); "
                         f"got {a.dtype} of shape {a.shape}")
    if a.size and a.shape[0] * a.shape[1] > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(f"image array of shape {a.shape} has more than {MAX_IMAGE_PIXELS} pixels; downscale it")
    if a.dtype != np.uint8:
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ImageError("image array has NaN or infinite values")
        if np.issubdtype(a.dtype, np.floating) and a.size and a.min() >= 0 and a.max() <= 1:
            a = a * 255.0  # float images in [0, 1]
        a = np.clip(np.round(a.astype(np.float64)), 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def working_size(width: int, height: int, max_side: int | None = MAX_SIDE) -> tuple[int, int]:
    """The size the models see: long side scaled to max_side (8 or more: EditConfig.max_side checks it),
    both floored to multiples of 8.

    max_side=None keeps the size, which must then already be a multiple of 8.
    """
    if max_side is None:
        if width % LATENT_STRIDE or height % LATENT_STRIDE:
            raise ImageError(f"image size {width}x{height} is not divisible by {LATENT_STRIDE}; "
                             f"crop it, or pass max_side (e.g. {MAX_SIDE}) to resize it")
        return width, height
    # The reference's get_W_H: the long side *is* max_side (width * (max_side / width) can be
    # max_side - 1e-14, which int() would floor a whole stride down), the short one
    # int(max_side / aspect) or int(max_side * aspect).
    aspect = width / height
    w, h = (max_side, int(max_side / aspect)) if aspect >= 1 else (int(max_side * aspect), max_side)
    w, h = w // LATENT_STRIDE * LATENT_STRIDE, h // LATENT_STRIDE * LATENT_STRIDE
    if w < LATENT_STRIDE or h < LATENT_STRIDE:
        raise ImageError(f"image {width}x{height} is too elongated: at max_side={max_side} a side "
                         f"falls below {LATENT_STRIDE} pixels")
    return w, h


def to_tensor(image: Union[Image.Image, np.ndarray], device=None, dtype=torch.float32) -> Tensor:
    """RGB image (or uint8 (H, W, 3) array) -> (1, 3, H, W) in [-1, 1], the VAE's input range."""
    a = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return (a.permute(2, 0, 1)[None].to(device=device, dtype=torch.float32) / 127.5 - 1).to(dtype)


def to_pil(x: Tensor) -> Image.Image:
    """(1, 3, H, W) in [-1, 1] -> 8-bit RGB image."""
    a = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(a)
