"""diffusers folders (`save_pretrained` layout): `unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
`scheduler/`, each with its config file and weights.

Our modules carry diffusers' parameter names, so the weights load unrenamed (but for the VAE's
pre-0.14 attention names); what this module does is translate config.json into our config
dataclasses, refusing diffusers options our models do not implement.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from transformers import CLIPTextConfig

from models.unet import UNetConfig
from models.vae import VAEConfig

from .errors import WeightsError, WeightsNotFoundError
from .files import Checkpoint, read_state_dict
from .keys import DEPRECATED_VAE_ATTENTION, rename_parts

WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model",
                "text_encoder_2": "model"}

# UNet2DConditionModel options our UNet lacks, with the one value it implements (every SD1.x/2.x
# checkpoint's). upcast_attention (true in SD2.1) is absent on purpose: diffusers' SDPA processor
# ignores it too, so its outputs are what ours are.
UNET_FIXED = {
    "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
    "norm_eps": 1e-5, "downsample_padding": 1, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "only_cross_attention": False,
    "mid_block_only_cross_attention": None, "dual_cross_attention": False,
    "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "class_embed_type": None, "num_class_embeds": None, "class_embeddings_concat": False,
    "time_cond_proj_dim": None, "time_embedding_type": "positional",
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default", "cross_attention_norm": None,
}
VAE_FIXED = {
    "in_channels": 3, "out_channels": 3, "act_fn": "silu", "shift_factor": None, "latents_mean": None,
    "latents_std": None, "use_quant_conv": True, "use_post_quant_conv": True, "mid_block_add_attention": True,
}
ADDITION_EMBED_TYPES = (None, "text_time")  # none (SD1.x/2.x) or SDXL's pooled text + size embedding
UP_BLOCK_OF = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise WeightsNotFoundError(f"no {path.name} at {path.parent}: not a diffusers folder?") from e
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path} is not valid JSON ({e})") from e


def weights_file(folder: Path, component: str, variant: Optional[str] = None) -> Path:
    """The component's weights, safetensors preferred over the older pickled .bin."""
    stem = WEIGHT_STEMS[component] + (f".{variant}" if variant else "")
    for name in (f"{stem}.safetensors", f"{stem}.bin"):
        if (folder / name).is_file():
            return folder / name
    raise WeightsNotFoundError(f"no {stem}.safetensors (or .bin) in {folder}")


def _refuse_unsupported(config: dict, fixed: dict, path: Path) -> None:
    def ok(value, want):  # diffusers also accepts per-level lists of the same value
        return value == want or (isinstance(value, (list, tuple)) and all(v == want for v in value))

    bad = [f"{k}={config[k]!r} (we implement {v!r})" for k, v in fixed.items() if k in config and not ok(config[k], v)]
    if bad:
        raise WeightsError(f"{path} asks for options our model does not implement: {'; '.join(bad)}")


def unet_config(config: dict, path: Path, prediction_type: str = "epsilon") -> UNetConfig:
    """UNet2DConditionModel's config.json -> UNetConfig; missing entries take diffusers' defaults."""
    _refuse_unsupported(config, UNET_FIXED, path)
    down = config.get("down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"])
    up = config.get("up_block_types", ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
    if any(t not in UP_BLOCK_OF for t in down) or list(up) != [UP_BLOCK_OF[t] for t in reversed(down)]:
        raise WeightsError(f"{path}: block types {down} / {up} are not SD's (cross-attention or plain "
                           f"Down/UpBlock2D, up path mirroring the down path)")
    # diffusers' naming quirk: in SD configs `attention_head_dim` holds the number of heads
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    heads = tuple(heads) if isinstance(heads, (list, tuple)) else (heads,) * len(down)
    depth = config.get("transformer_layers_per_block", 1)
    depth = tuple(depth) if isinstance(depth, (list, tuple)) else (depth,) * len(down)
    added = config.get("addition_embed_type")
    if added not in ADDITION_EMBED_TYPES or any(isinstance(d, (list, tuple)) for d in depth):
        raise WeightsError(f"{path} asks for options our model does not implement: addition_embed_type={added!r} "
                           f"(we implement {' or '.join(map(repr, ADDITION_EMBED_TYPES))}), "
                           f"transformer_layers_per_block={depth} (one depth per level)")
    time_dim = (config.get("addition_time_embed_dim") or 0) if added else 0
    return UNetConfig(
        block_channels=tuple(config.get("block_out_channels", (320, 640, 1280, 1280))),
        attention_levels=tuple(t == "CrossAttnDownBlock2D" for t in down),
        heads=heads,
        layers_per_block=config.get("layers_per_block", 2),
        context_dim=config.get("cross_attention_dim", 1280),
        linear_proj=config.get("use_linear_projection", False),
        in_channels=config.get("in_channels", 4),
        out_channels=config.get("out_channels", 4),
        norm_groups=config.get("norm_num_groups", 32),
        prediction_type=config.get("prediction_type") or prediction_type,
        transformer_depth=None if set(depth) == {1} else depth,
        addition_time_embed_dim=time_dim,
        # the added MLP's input: pooled text embedding, then 6 size sinusoids
        pooled_text_dim=config["projection_class_embeddings_input_dim"] - 6 * time_dim if added else 0,
    )


def vae_config(config: dict, path: Path) -> VAEConfig:
    """AutoencoderKL's config.json -> VAEConfig; missing entries take diffusers' defaults."""
    _refuse_unsupported(config, VAE_FIXED, path)
    types = set(config.get("down_block_types", ["DownEncoderBlock2D"])) | set(config.get("up_block_types",
                                                                                         ["UpDecoderBlock2D"]))
    if types != {"DownEncoderBlock2D", "UpDecoderBlock2D"}:
        raise WeightsError(f"{path}: block types {sorted(types)} are not SD's autoencoder blocks")
    return VAEConfig(
        block_channels=tuple(config.get("block_out_channels", (64,))),
        layers_per_block=config.get("layers_per_block", 1),
        latent_channels=config.get("latent_channels", 4),
        norm_groups=config.get("norm_num_groups", 32),
        scaling_factor=config.get("scaling_factor", VAEConfig.scaling_factor),  # diffusers' default too
    )


def read_unet(root: Path, variant: Optional[str] = None) -> Checkpoint:
    folder = root / "unet"
    scheduler = root / "scheduler" / "scheduler_config.json"
    # SD2.1-768 predicts v: diffusers records that in the scheduler's config, not the UNet's
    prediction = read_json(scheduler).get("prediction_type", "epsilon") if scheduler.is_file() else "epsilon"
    config = unet_config(read_json(folder / "config.json"), folder / "config.json", prediction)
    path = weights_file(folder, "unet", variant)
    return Checkpoint(read_state_dict(path), config, path)


def read_vae(root: Path, variant: Optional[str] = None) -> Checkpoint:
    """From a pipeline folder's vae/, or a VAE's own folder (config.json at its root, as the community
    fp16-safe SDXL VAE madebyollin/sdxl-vae-fp16-fix is published)."""
    folder = root / "vae" if (root / "vae").is_dir() or not (root / "config.json").is_file() else root
    config = vae_config(read_json(folder / "config.json"), folder / "config.json")
    path = weights_file(folder, "vae", variant)
    return Checkpoint(rename_parts(read_state_dict(path), DEPRECATED_VAE_ATTENTION), config, path)


def read_text_encoders(root: Path, variant: Optional[str] = None) -> list[Checkpoint]:
    """transformers' CLIPTextModel weights and config (keys in whichever transformers layout saved them);
    SDXL folders add text_encoder_2/ (a CLIPTextModelWithProjection)."""
    ckpts = []
    for component in ("text_encoder", "text_encoder_2") if (root / "text_encoder_2").is_dir() else ("text_encoder",):
        folder = root / component
        read_json(folder / "config.json")  # a clear error when it is missing
        path = weights_file(folder, component, variant)
        ckpts.append(Checkpoint(read_state_dict(path), CLIPTextConfig.from_pretrained(folder), path))
    return ckpts
