"""Reading photos of any mode, converting to and from tensors, writing results atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

PathLike = Union[str, os.PathLike]
ImageLike = Union[PathLike, Image.Image, np.ndarray]

# The reference UI scales the long side to 512 and floors both sides to multiples of 8.
MAX_SIDE = 512
# The VAE downsamples by 8: image sizes must be multiples of it, and a pixel (x, y) lies in latent
# cell (x // 8, y // 8) (reference: `scale=1/8`, `source // 8`).
LATENT_STRIDE = 8


class ImageError(ValueError):
    """An input image that cannot be used; the message says why and what to do."""


def load_image(image: ImageLike) -> Image.Image:
    """Any readable photo as 8-bit RGB: palette, grey, alpha, CMYK and 16-bit modes converted."""
    if isinstance(image, np.ndarray):
        image = array_to_pil(image)
    elif not isinstance(image, Image.Image):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"image file not found: {path}")
        try:
            image = Image.open(path)
            image.load()
        except (UnidentifiedImageError, OSError) as e:
            raise ImageError(f"cannot read {path} as an image ({e}); give a PNG or JPEG file") from e
    if image.width < 1 or image.height < 1:
        raise ImageError(f"image has no pixels ({image.width}x{image.height})")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16/32-bit grey: rescale to 8 bits
        a = np.asarray(image, dtype=np.float64)
        lo, hi = a.min(), a.max()
        image = Image.fromarray(((a - lo) / max(hi - lo, 1e-12) * 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")  # transparent pixels become white, not black
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def array_to_pil(a: np.ndarray) -> Image.Image:
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and a.min() >= 0 and a.max() <= 1:
            a = a * 255.0  # float images in [0, 1]
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def working_size(width: int, height: int, max_side: int | None = MAX_SIDE) -> tuple[int, int]:
    """The size the models see: long side scaled to max_side, both floored to multiples of 8.

    max_side=None keeps the size, which must then already be a multiple of 8.
    """
    if max_side is not None and max_side < LATENT_STRIDE:
        raise ImageError(f"max_side must be at least {LATENT_STRIDE} pixels, got {max_side}")
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


def image_format(path: Path) -> str:
    """PIL's format name for an output path's extension."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"unknown image extension {path.suffix!r} for {path}; use .png or .jpg")
    return fmt


def save_image_atomic(image: Image.Image, path: PathLike) -> Path:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    fmt = image_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
