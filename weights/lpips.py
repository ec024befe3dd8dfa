"""LPIPS weights: the `lpips` package's linear heads and torchvision's ImageNet AlexNet.

Where the files come from:
- heads (6 KB): shipped inside the `lpips` package, `lpips/weights/v0.1/alex.pth`;
  `lpips_heads_path()` finds it without importing the package (whose import needs torchvision);
- AlexNet (233 MB): torchvision's ImageNet file, fetched by `fetch_alexnet()` into the weights
  cache (`$REGIONDRAG_WEIGHTS`, else `weights/cache/`).

    model = load_lpips()    # both files from their default places
"""
from __future__ import annotations

import hashlib
import http.client
import importlib.util
import urllib.request
from pathlib import Path
from typing import Optional

from torch import Tensor, nn

from models.lpips import CHANNELS, LPIPS, AlexNet

from .files import PathLike, check_state_dict, read_state_dict
from .errors import WeightsError, WeightsNotFoundError
from .hub import offline, cache_dir

# torchvision's AlexNet_Weights.IMAGENET1K_V1; the name's suffix is the sha256's first 8 hex digits
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
LPIPS_VERSION = "0.1"  # the lpips package default, used by DragDiffusion's and RegionDrag's evaluations
CONV_INDICES = (0, 3, 6, 8, 10)  # the five convs in torchvision's `features` Sequential


def lpips_heads_path() -> Path:
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        raise WeightsNotFoundError("the LPIPS heads ship with the `lpips` package: `pip install --no-deps lpips` "
                                   "(no torchvision needed), or pass the path of a v0.1 alex.pth")
    return Path(spec.origin).parent / "weights" / f"v{LPIPS_VERSION}" / "alex.pth"


def fetch_alexnet(dest: Optional[PathLike] = None) -> Path:
    """Download torchvision's AlexNet once (checking its hash); return the local path."""
    dest = Path(dest) if dest is not None else cache_dir() / ALEXNET_URL.rsplit("/", 1)[1]
    if dest.is_file():
        return dest

    def not_found(reason: str) -> WeightsNotFoundError:  # worded as the hub's (hub.fetch_files)
        return WeightsNotFoundError(f"AlexNet for LPIPS: {reason} (needed: {dest}). Fetch {ALEXNET_URL} where "
                                    f"there is internet and put it there (or point $REGIONDRAG_WEIGHTS at a "
                                    f"folder holding it)")

    if offline():  # HF_HUB_OFFLINE means no network for any weights, not only the hub's
        raise not_found("not in the weights cache, and HF_HUB_OFFLINE is set")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        urllib.request.urlretrieve(ALEXNET_URL, part)
    except (OSError, http.client.HTTPException) as e:  # URLError and socket errors are OSErrors
        part.unlink(missing_ok=True)
        raise not_found(f"download failed ({type(e).__name__}: {e})") from e
    expected = ALEXNET_URL.rsplit("-", 1)[1].split(".")[0]
    if not hashlib.sha256(part.read_bytes()).hexdigest().startswith(expected):
        part.unlink()
        raise WeightsError(f"{ALEXNET_URL} downloaded with the wrong sha256 (expected prefix {expected}); retry")
    part.rename(dest)  # atomic: a half-written file is never taken for the checkpoint
    return dest


def _assign(module: nn.Module, sd: dict[str, Tensor], key_map: dict[str, str], path: PathLike, what: str,
            cause: str) -> None:
    """Load `sd[file_key]` into `module`'s `key_map[file_key]`, strictly: every key and shape must match."""
    own = module.state_dict()
    check_state_dict(path, what, {file_key: own[key].shape for file_key, key in key_map.items()}, sd, cause)
    module.load_state_dict({key: sd[file_key] for file_key, key in key_map.items()}, strict=True)


def load_alexnet(net: AlexNet, path: PathLike) -> None:
    """torchvision's AlexNet checkpoint; its classifier (unused by LPIPS) is skipped."""
    sd = {k: v for k, v in read_state_dict(path).items() if not k.startswith("classifier.")}
    key_map = {f"features.{i}.{p}": f"features.{i}.{p}" for i in CONV_INDICES for p in ("weight", "bias")}
    _assign(net, sd, key_map, path, "a torchvision AlexNet checkpoint (features.{0,3,6,8,10})",
            "Likely cause: another file than torchvision's ImageNet AlexNet (the LPIPS heads file in its place?).")


def load_lpips_heads(lins: nn.ModuleList, path: PathLike) -> None:
    """The lpips package's `lin{k}.model.1.weight` (index 1: after its training-only dropout)."""
    key_map = {f"lin{k}.model.1.weight": f"{k}.weight" for k in range(len(CHANNELS))}
    _assign(lins, read_state_dict(path), key_map, path, f"an lpips v{LPIPS_VERSION} AlexNet head file (lin0..lin4)",
            f"Likely cause: the heads of another network (vgg.pth, squeeze.pth) or another lpips version than "
            f"v{LPIPS_VERSION}, or the AlexNet file in its place.")


def load_lpips(heads_path: Optional[PathLike] = None, alexnet_path: Optional[PathLike] = None) -> LPIPS:
    """An eval-mode, frozen LPIPS; default files: the lpips package's heads, the cached AlexNet."""
    model = LPIPS()
    load_alexnet(model.net, alexnet_path if alexnet_path is not None else fetch_alexnet())
    load_lpips_heads(model.lins, heads_path if heads_path is not None else lpips_heads_path())
    return model.eval().requires_grad_(False)
