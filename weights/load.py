"""The loaders: a diffusers folder, a single-file checkpoint or a hub model id -> our modules.

    unet = load_unet("stable-diffusion-v1-5/stable-diffusion-v1-5", dtype=torch.float16, device="cuda")
    vae = load_vae("v1-5-pruned-emaonly.safetensors")
    text_encoder = load_text_encoder("path/to/diffusers/folder")

The config comes from the checkpoint (config.json, or tensor shapes for a single file) unless
one is given. Loading is strict: missing, unexpected and wrongly shaped tensors are a
WeightsError naming the file and the likely cause. Models are built on the meta device and
take the checkpoint's tensors (cast, moved) as their parameters: no random fp32 copy first.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from models.text_encoder import SDXLTextEncoder, TextEncoder
from models.unet import UNet, UNetConfig
from models.backbones import BACKBONES
from models.vae import AutoencoderKL, VAEConfig

from . import diffusers_layout, original_layout
from .errors import WeightsNotFoundError
from .files import Checkpoint, PathLike, check_state_dict, raise_on_mismatch
from .hub import DEFAULT_MODEL, MODEL_ID, resolve, text_components

Device = Union[str, torch.device]
READERS = {  # component -> (diffusers-folder reader, single-file reader)
    "unet": (diffusers_layout.read_unet, original_layout.read_unet),
    "vae": (diffusers_layout.read_vae, original_layout.read_vae),
    "text_encoder": (diffusers_layout.read_text_encoders, original_layout.read_text_encoders),  # lists of them
}


def _read(path: Path, component: str, variant: Optional[str], config) -> Checkpoint:
    from_folder, from_file = READERS[component]
    return from_folder(path, variant) if path.is_dir() else from_file(path, config)


def _settings(cfg) -> dict:
    """A config's settings: our dataclasses' fields, or a transformers config's public entries."""
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    return {k: v for k, v in cfg.to_dict().items() if not k.startswith("_") and k != "transformers_version"}


def _sd_version(cfg: UNetConfig) -> str:
    return f"SD{2 if cfg.context_dim == original_layout.SD2_CONTEXT_DIM else 1}.x (context width {cfg.context_dim})"


def _likely_cause(given, found, matched: int) -> str:
    a, b = _settings(given), _settings(found)
    diffs = sorted(f"{k}: checkpoint {b.get(k)!r}, given {a.get(k)!r}" for k in a.keys() | b.keys()
                   if a.get(k) != b.get(k))
    if diffs:
        what = (f"this looks like an {_sd_version(found)} checkpoint but an {_sd_version(given)} config was given"
                if isinstance(given, UNetConfig) and given.context_dim != found.context_dim
                else "the config given differs from the checkpoint's")
        return f"Likely cause: {what} ({'; '.join(diffs)})."
    if matched == 0:
        return "Likely cause: the file holds another model's weights (none of the expected names is in it)."
    return "Likely cause: an incomplete file, or weights of a modified architecture."


def _build(cls: type[nn.Module], cfg, ckpt: Checkpoint, dtype: torch.dtype, device: Device) -> nn.Module:
    with torch.device("meta"):
        model = cls(cfg)
    expected, state = {k: t.shape for k, t in model.state_dict().items()}, ckpt.state_dict
    check_state_dict(ckpt.path, f"a checkpoint of {cls.__name__}({cfg})", expected, state,
                     _likely_cause(cfg, ckpt.config, len(expected.keys() & state.keys())))
    state = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model.eval()


def load_unet(src: PathLike = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, device: Device = "cpu", *,
              config: Optional[UNetConfig] = None, variant: Optional[str] = None) -> UNet:
    """variant: a hub/diffusers weights variant such as "fp16" (diffusion_pytorch_model.fp16.safetensors)."""
    path = resolve(src, ("unet", "scheduler"), variant)
    ckpt = _read(path, "unet", variant, config)
    if config is None and path.is_file() and ckpt.config.context_dim == original_layout.SD2_CONTEXT_DIM:
        warnings.warn(original_layout.SD2_PREDICTION_NOTE)
    return _build(UNet, config or ckpt.config, ckpt, dtype, device)


def _vae_path(src: PathLike, variant: Optional[str]) -> Path:
    """A pipeline's vae/, or a hub repo holding a VAE alone (config.json and weights at its root)."""
    try:
        return resolve(src, ("vae",), variant)
    except WeightsNotFoundError as first:
        if not MODEL_ID.fullmatch(str(src)):
            raise
        try:
            return resolve(src, ("vae_alone",), variant)
        except WeightsNotFoundError:
            raise first from None


def load_vae(src: PathLike = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, device: Device = "cpu", *,
             config: Optional[VAEConfig] = None, variant: Optional[str] = None) -> AutoencoderKL:
    ckpt = _read(_vae_path(src, variant), "vae", variant, config)
    return _build(AutoencoderKL, config or ckpt.config, ckpt, dtype, device)


def _tokenizer(src: PathLike, component: str = "tokenizer") -> CLIPTokenizer:
    """From a diffusers folder (its tokenizer/ or tokenizer_2/), a tokenizer folder, or a hub model id."""
    root = resolve(src, (component,))
    folder = root / component if (root / component).is_dir() else root
    if not (folder / "vocab.json").is_file():
        raise WeightsNotFoundError(f"no CLIP tokenizer (vocab.json, merges.txt) in {folder}")
    return CLIPTokenizer.from_pretrained(folder)


def _clip_text_model(ckpt: Checkpoint, cfg: CLIPTextConfig, dtype: torch.dtype, device: Device,
                     cls: type = CLIPTextModel) -> nn.Module:
    """transformers' own loader: it knows how its key layout changed across versions (text_model.*)."""
    model, info = cls.from_pretrained(None, config=cfg, state_dict=ckpt.state_dict, ignore_mismatched_sizes=True,
                                      output_loading_info=True)
    matched = len(model.state_dict()) - len(info["missing_keys"])
    raise_on_mismatch(ckpt.path, f"a checkpoint of {cls.__name__}", info["missing_keys"], info["unexpected_keys"],
                      info["mismatched_keys"], _likely_cause(cfg, ckpt.config, matched))
    return model.to(device=device, dtype=dtype).eval()


def load_text_encoder(src: PathLike = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, device: Device = "cpu", *,
                      config: Union[None, CLIPTextConfig, Sequence[CLIPTextConfig]] = None,
                      tokenizer: Optional[PathLike] = None, skip_last_layers: int = 0,
                      variant: Optional[str] = None) -> Union[TextEncoder, SDXLTextEncoder]:
    """transformers' CLIPTextModel and CLIPTokenizer, wrapped; for SDXL (a folder with text_encoder_2/, a
    single file with conditioner.embedders.*) both encoders, an SDXLTextEncoder (config: one per encoder).
    A single file carries no tokenizer: it comes from `tokenizer` (a folder or hub id), by default its
    backbone's hub model's."""
    path = resolve(src, text_components(src), variant)
    ckpts = _read(path, "text_encoder", variant, config)
    configs = list(config) if isinstance(config, (list, tuple)) else [config] * len(ckpts)
    if path.is_dir():
        tokenizer_src = path if tokenizer is None else tokenizer
    else:
        tokenizer_src = tokenizer or BACKBONES[original_layout.backbone_of_file(path)].hub_id
    encoders = [TextEncoder(_clip_text_model(ckpt, cfg or ckpt.config, dtype, device, cls),
                            _tokenizer(tokenizer_src, component), skip_last_layers)
                for ckpt, cfg, cls, component in zip(ckpts, configs, (CLIPTextModel, CLIPTextModelWithProjection),
                                                     ("tokenizer", "tokenizer_2"))]
    return encoders[0] if len(encoders) == 1 else SDXLTextEncoder(*encoders)
