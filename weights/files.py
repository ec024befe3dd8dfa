"""Checkpoint files -> flat {name: tensor} dicts, without ever unpickling code."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, NamedTuple, Union

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from .errors import WeightsError, WeightsNotFoundError

PathLike = Union[str, Path]
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")


class Checkpoint(NamedTuple):
    """One component's tensors under our (= diffusers') names, the config they imply, their file."""
    state_dict: dict[str, Tensor]
    config: Any  # UNetConfig, VAEConfig or transformers' CLIPTextConfig
    path: Path


def read_state_dict(path: PathLike, prefix: str = "") -> dict[str, Tensor]:
    """The tensors whose names start with `prefix` (all by default) of a .safetensors file or a
    torch.save file (.ckpt/.bin/.pt/.pth), on the CPU. Only those tensors are read from disk."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"no checkpoint file at {path}")
    try:
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        # mmap: tensors of a multi-GB .ckpt are paged in when used, so filtering by prefix is cheap
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(f"{path} holds pickled Python objects besides tensors, which weights-only loading "
                           f"refuses; convert it to .safetensors with code you trust") from e
    except (SafetensorError, OSError, RuntimeError, EOFError) as e:
        raise WeightsError(f"cannot read {path}: the file looks truncated or corrupt ({e}); download it again") from e
    # Lightning checkpoints (the original SD .ckpt files) nest the weights under "state_dict"
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    if not any(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no tensors (expected a state dict, optionally under 'state_dict')")
    return {k: v for k, v in state.items() if isinstance(v, Tensor) and k.startswith(prefix)}
