"""Single-file checkpoints in the original (CompVis/Stability) layout: one file holding

    model.diffusion_model.*          the UNet        (openaimodel.UNetModel)
    first_stage_model.*              the VAE         (autoencoder.AutoencoderKL)
    cond_stage_model.transformer.*   the text model  (transformers' CLIPTextModel, SD1.x)

Keys are renamed to ours (= diffusers') by the rule tables below, checked against diffusers'
`convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint` in tests/test_weights.py. A file
carries no config, so it is inferred from tensor shapes, with SD's conventions for what shapes
do not show: 32 norm groups; SD1.x (context width 768) 8 heads per level, SD2.x (1024) 64-wide
heads and v-prediction (the 768-v models; pass a config for SD2-base).
"""
from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor
from transformers import CLIPTextConfig

from models.unet import UNetConfig
from models.vae import VAEConfig

from .errors import WeightsError
from .files import Checkpoint, read_state_dict
from .keys import DEPRECATED_VAE_ATTENTION, Rule, rename_parts, rename_prefix, strip_prefix

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD2.x's OpenCLIP text tower: fused qkv, another layout

SD2_CONTEXT_DIM = 1024  # OpenCLIP ViT-H width; SD1.x's CLIP ViT-L is 768
SD1_HEADS = 8           # SD1.x: 8 heads at every level (head width varies)
SD2_HEAD_DIM = 64       # SD2.x: 64-wide heads (5, 10, 20, 20 heads)
SD_NORM_GROUPS = 32
SD2_PREDICTION_NOTE = ("a single-file SD2.x checkpoint does not say what it predicts; assuming v (the 768-v models). "
                       "For SD2-base pass config=dataclasses.replace(UNetConfig.sd21(), prediction_type='epsilon')")


def unet_rules(k: int) -> list[Rule]:
    """The original numbers input/output blocks consecutively, k = layers_per_block + 1 per level:
    input block i >= 1 is level (i-1)//k, slot (i-1)%k; output block i is level i//k, slot i%k.
    In a block, `.0` is the ResBlock (or the downsampler `.0.op`) and `.1` the transformer; the
    upsampler comes last: `.1.conv` where a level has no transformer, else `.2.conv`."""
    def at(m: re.Match) -> int:
        return int(m[1])

    return [
        (r"time_embed\.0\.", "time_embedding.linear_1."),
        (r"time_embed\.2\.", "time_embedding.linear_2."),
        (r"input_blocks\.0\.0\.", "conv_in."),
        (r"input_blocks\.(\d+)\.0\.op\.", lambda m: f"down_blocks.{(at(m) - 1) // k}.downsamplers.0.conv."),
        (r"input_blocks\.(\d+)\.0\.", lambda m: f"down_blocks.{(at(m) - 1) // k}.resnets.{(at(m) - 1) % k}."),
        (r"input_blocks\.(\d+)\.1\.", lambda m: f"down_blocks.{(at(m) - 1) // k}.attentions.{(at(m) - 1) % k}."),
        (r"middle_block\.0\.", "mid_block.resnets.0."),
        (r"middle_block\.1\.", "mid_block.attentions.0."),
        (r"middle_block\.2\.", "mid_block.resnets.1."),
        (r"output_blocks\.(\d+)\.[12]\.conv\.", lambda m: f"up_blocks.{at(m) // k}.upsamplers.0.conv."),
        (r"output_blocks\.(\d+)\.0\.", lambda m: f"up_blocks.{at(m) // k}.resnets.{at(m) % k}."),
        (r"output_blocks\.(\d+)\.1\.", lambda m: f"up_blocks.{at(m) // k}.attentions.{at(m) % k}."),
        (r"out\.0\.", "conv_norm_out."),
        (r"out\.2\.", "conv_out."),
    ]


# inside a UNet ResBlock: the original's Sequential indices -> named layers (transformer names agree)
RESBLOCK_PARTS: list[Rule] = [
    (r"\.in_layers\.0\.", ".norm1."),
    (r"\.in_layers\.2\.", ".conv1."),
    (r"\.emb_layers\.1\.", ".time_emb_proj."),
    (r"\.out_layers\.0\.", ".norm2."),
    (r"\.out_layers\.3\.", ".conv2."),
    (r"\.skip_connection\.", ".conv_shortcut."),
]


def vae_rules(levels: int) -> list[Rule]:
    """The decoder's `up.i` counts from the highest resolution; diffusers' up_blocks in run order."""
    return [
        (r"encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
        (r"encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
        (r"decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.resnets."),
        (r"decoder\.up\.(\d+)\.upsample\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0."),
        (r"(encoder|decoder)\.mid\.block_([12])\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
        (r"(encoder|decoder)\.mid\.attn_1\.", r"\1.mid_block.attentions.0."),
        (r"(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    ]


VAE_PARTS: list[Rule] = [
    (r"\.nin_shortcut\.", ".conv_shortcut."),
    (r"(attentions\.0)\.norm\.", r"\1.group_norm."),
    (r"(attentions\.0)\.([qkv])\.", r"\1.to_\2."),
    (r"(attentions\.0)\.proj_out\.", r"\1.to_out.0."),
    *DEPRECATED_VAE_ATTENTION,
]
VAE_ATTENTION_WEIGHT = re.compile(r".*attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight")


def _indices(state: dict[str, Tensor], pattern: str) -> list[int]:
    return sorted({int(m[1]) for k in state if (m := re.match(pattern, k))})


def _read(path: Path, prefix: str, what: str) -> dict[str, Tensor]:
    state = strip_prefix(read_state_dict(path, prefix), prefix)
    if not state:
        hint = (" It holds an SD2.x OpenCLIP text model, which only loads from a diffusers folder."
                if what == "text model" and read_state_dict(path, OPEN_CLIP_PREFIX) else "")
        raise WeightsError(f"{path} has no {what} weights (no keys starting with {prefix!r}); is it a "
                           f"single-file SD checkpoint in the original layout?{hint}")
    return state


def _infer(path: Path, what: str, infer, state: dict[str, Tensor], given=None):
    """The config the shapes imply; `given` when they imply none (it is only compared with, for hints)."""
    try:
        return infer(state)
    except (KeyError, ValueError, ZeroDivisionError) as e:
        if given is not None:
            return given
        raise WeightsError(f"{path}: cannot infer the {what} config from tensor shapes ({type(e).__name__}: "
                           f"{e} after renaming to diffusers names); is it an SD1.x/2.x checkpoint? "
                           f"Else pass its config") from e


def infer_unet_config(state: dict[str, Tensor]) -> UNetConfig:
    levels = len(_indices(state, r"down_blocks\.(\d+)\."))
    channels = tuple(state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels))
    context_dim = state["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape[1]
    sd2 = context_dim == SD2_CONTEXT_DIM
    return UNetConfig(
        block_channels=channels,
        attention_levels=tuple(f"down_blocks.{i}.attentions.0.proj_in.weight" in state for i in range(levels)),
        heads=tuple(c // SD2_HEAD_DIM for c in channels) if sd2 else (SD1_HEADS,) * levels,
        layers_per_block=len(_indices(state, r"down_blocks\.0\.resnets\.(\d+)\.")),
        context_dim=context_dim,
        linear_proj=state["mid_block.attentions.0.proj_in.weight"].ndim == 2,
        in_channels=state["conv_in.weight"].shape[1],
        out_channels=state["conv_out.weight"].shape[0],
        norm_groups=SD_NORM_GROUPS,
        prediction_type="v_prediction" if sd2 else "epsilon",
    )


def infer_vae_config(state: dict[str, Tensor]) -> VAEConfig:
    levels = len(_indices(state, r"encoder\.down_blocks\.(\d+)\."))
    return VAEConfig(
        block_channels=tuple(state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels)),
        layers_per_block=len(_indices(state, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")),
        latent_channels=state["post_quant_conv.weight"].shape[0],
        norm_groups=SD_NORM_GROUPS,
    )


def infer_text_config(state: dict[str, Tensor]) -> CLIPTextConfig:
    """SD1.x's text model is CLIP ViT-L/14's: quick-GELU, 64-wide heads."""
    vocab, width = state["text_model.embeddings.token_embedding.weight"].shape
    return CLIPTextConfig(
        vocab_size=vocab, hidden_size=width, num_attention_heads=width // 64, hidden_act="quick_gelu",
        intermediate_size=state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=len(_indices(state, r"text_model\.encoder\.layers\.(\d+)\.")),
        max_position_embeddings=state["text_model.embeddings.position_embedding.weight"].shape[0],
    )


def read_unet(path: Path, config=None) -> Checkpoint:
    state = _read(path, UNET_PREFIX, "UNet")
    downsamplers = _indices(state, r"input_blocks\.(\d+)\.0\.op\.")
    k = downsamplers[0] if downsamplers else len(_indices(state, r"input_blocks\.(\d+)\."))
    state = rename_parts(rename_prefix(state, unet_rules(k)), RESBLOCK_PARTS)
    return Checkpoint(state, _infer(path, "UNet", infer_unet_config, state, config), path)


def read_vae(path: Path, config=None) -> Checkpoint:
    state = _read(path, VAE_PREFIX, "VAE")
    state = rename_parts(rename_prefix(state, vae_rules(len(_indices(state, r"decoder\.up\.(\d+)\.")))), VAE_PARTS)
    # the original's attention projections are 1x1 convolutions: (C, C, 1, 1) -> Linear's (C, C)
    state = {k: v[:, :, 0, 0] if v.ndim == 4 and VAE_ATTENTION_WEIGHT.fullmatch(k) else v for k, v in state.items()}
    return Checkpoint(state, _infer(path, "VAE", infer_vae_config, state, config), path)


def read_text_encoder(path: Path, config=None) -> Checkpoint:
    """Keys stay in transformers' `text_model.*` layout (its loader adapts them to the installed version)."""
    state = _read(path, TEXT_PREFIX, "text model")
    return Checkpoint(state, _infer(path, "text model", infer_text_config, state, config), path)
