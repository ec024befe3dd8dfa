"""Checkpoint files -> flat {name: tensor} dicts, without ever unpickling code; the strict check
every loader runs before taking a file's tensors."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping, NamedTuple, Sequence, Union

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from .errors import WeightsError, WeightsNotFoundError

PathLike = Union[str, Path]
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")
TORCH_ZIP = b"PK\x03\x04"  # torch.save's format since torch 1.6 is a zip archive; older files are one pickle,
PICKLE = b"\x80"           # whose first byte is the protocol opcode
SHOWN = 8  # keys listed per kind of mismatch


class Checkpoint(NamedTuple):
    """One component's tensors under our (= diffusers') names, the config they imply, their file."""
    state_dict: dict[str, Tensor]
    config: Any  # UNetConfig, VAEConfig or transformers' CLIPTextConfig
    path: Path


def read_state_dict(path: PathLike, prefix: str = "") -> dict[str, Tensor]:
    """The tensors whose names start with `prefix` (all by default) of a .safetensors file or a
    torch.save file (.ckpt/.bin/.pt/.pth), on the CPU. Only those tensors are read from disk.
    Dicts of tensors nested one level deep become `outer.inner` keys: the official IP-Adapter .bin
    holds {"image_proj": {...}, "ip_adapter": {...}}, its .safetensors twin the same tensors flat."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"no checkpoint file at {path}")
    try:
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        with path.open("rb") as f:
            head = f.read(len(TORCH_ZIP))
        if not head.startswith((TORCH_ZIP, PICKLE)):
            raise EOFError("not a torch.save file")
        # mmap (zip format only): tensors of a multi-GB .ckpt are paged in when used, so filtering by prefix is cheap
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=head == TORCH_ZIP)
    except pickle.UnpicklingError as e:
        raise WeightsError(f"{path} holds pickled Python objects besides tensors, which weights-only loading "
                           f"refuses; convert it to .safetensors with code you trust") from e
    except (SafetensorError, OSError, RuntimeError, EOFError) as e:
        raise WeightsError(f"cannot read {path}: the file looks truncated or corrupt ({e}); download it again") from e
    # Lightning checkpoints (the original SD .ckpt files) nest the weights under "state_dict"
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    nested = {f"{outer}.{k}": v for outer, sub in state.items() if isinstance(sub, dict) for k, v in sub.items()}
    state = {**state, **nested}
    if not any(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no tensors (expected a state dict, optionally under 'state_dict')")
    return {k: v for k, v in state.items() if isinstance(v, Tensor) and k.startswith(prefix)}


def tensor_names(path: PathLike) -> list[str]:
    """The tensor names of a checkpoint file; safetensors reads only its header, a torch.save zip file
    is memory-mapped (tensors are paged in only when used)."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        try:
            with safe_open(path, framework="pt") as f:
                return list(f.keys())
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"cannot read {path}: the file looks truncated or corrupt ({e}); download it again") from e
    return list(read_state_dict(path))


def _few(keys: Iterable[str]) -> str:
    keys = sorted(map(str, keys))
    return ", ".join(keys[:SHOWN]) + (f", ... ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")


def raise_on_mismatch(path: PathLike, target: str, missing: Collection[str], unexpected: Collection[str],
                      wrong: Collection[tuple[str, Sequence[int], Sequence[int]]], cause: str) -> None:
    """One WeightsError for a strict load gone wrong, naming the file, a few keys of each kind and
    the likely cause; `wrong` holds (key, shape in the file, shape in the model)."""
    if not (missing or unexpected or wrong):
        return
    kinds = [f"{len(missing)} missing keys: {_few(missing)}"] if missing else []
    kinds += [f"{len(unexpected)} unexpected keys: {_few(unexpected)}"] if unexpected else []
    kinds += [f"{len(wrong)} tensors of the wrong shape:"] if wrong else []
    shapes = [f"{path}: {k} has shape {tuple(a)}, expected {tuple(b)}" for k, a, b in sorted(wrong)[:SHOWN]]
    shapes += [f"... ({len(wrong) - SHOWN} more)"] if len(wrong) > SHOWN else []
    raise WeightsError("\n".join([f"{path} is not {target}: {'; '.join(kinds)}", *shapes, cause]))


def check_state_dict(path: PathLike, target: str, expected: Mapping[str, Sequence[int]], state: Mapping[str, Tensor],
                     cause: str) -> None:
    """Strict loading's check: `state` must hold exactly the `expected` {key: shape}, else a WeightsError
    (see raise_on_mismatch); `target` completes "<path> is not ...", `cause` is the likely-cause sentence."""
    wrong = [(k, state[k].shape, shape) for k, shape in expected.items()
             if k in state and tuple(state[k].shape) != tuple(shape)]
    raise_on_mismatch(path, target, expected.keys() - state.keys(), state.keys() - expected.keys(), wrong, cause)
