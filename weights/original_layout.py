"""Single-file checkpoints in the original (CompVis/Stability) layout: one file holding

    model.diffusion_model.*                  the UNet        (openaimodel.UNetModel)
    first_stage_model.*                      the VAE         (autoencoder.AutoencoderKL)
    cond_stage_model.transformer.*           SD1.x's text model (transformers' CLIPTextModel)
    cond_stage_model.model.*                 SD2.x's text model (OpenCLIP ViT-H: fused in_proj)
    conditioner.embedders.0.transformer.*    SDXL's first text model (transformers' CLIPTextModel)
    conditioner.embedders.1.model.*          SDXL's second (OpenCLIP ViT-bigG, with text_projection)

Keys are renamed to ours (= diffusers' / transformers') by the rule tables below, checked against
diffusers' `convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint` / `convert_open_clip_checkpoint`
in the tests. A file carries no config, so it is inferred from tensor shapes, with SD's conventions
for what shapes do not show: 32 norm groups; SD1.x 8 heads per level, SD2.x and SDXL 64-wide heads;
SD2.x v-prediction (the 768-v models; pass a config for SD2-base); SDXL's VAE scaling factor.
"""
from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor
from transformers import CLIPTextConfig

from models.unet import UNetConfig
from models.vae import VAEConfig

from models.backbones import BACKBONES, backbone_of
from .errors import WeightsError
from .files import Checkpoint, read_state_dict, tensor_names
from .keys import DEPRECATED_VAE_ATTENTION, Rule, rename_parts, rename_prefix, strip_prefix

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD2.x's OpenCLIP text tower: fused qkv, another layout
SDXL_TEXT_PREFIXES = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")
TEXT_PREFIXES = {"sd15": (TEXT_PREFIX,), "sd21": (OPEN_CLIP_PREFIX,), "sdxl": SDXL_TEXT_PREFIXES}

SD2_CONTEXT_DIM = BACKBONES["sd21"].context_dim  # OpenCLIP ViT-H width; SD1.x's CLIP ViT-L is 768
SD1_HEADS = 8           # SD1.x: 8 heads at every level (head width varies)
SD2_HEAD_DIM = 64       # SD2.x and SDXL: 64-wide heads (SD2: 5, 10, 20, 20; SDXL: 5, 10, 20)
SD_NORM_GROUPS = 32
SDXL_TIME_EMBED_DIM = 256  # SDXL's addition_time_embed_dim, when the file has no text model to tell it
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
        (r"label_emb\.0\.0\.", "add_embedding.linear_1."),  # SDXL's text_time embedding MLP
        (r"label_emb\.0\.2\.", "add_embedding.linear_2."),
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


# OpenCLIP's text tower (SD2.x, SDXL's second encoder) -> transformers' CLIPTextModel(WithProjection)
OPEN_CLIP_RULES: list[Rule] = [
    (r"token_embedding\.", "text_model.embeddings.token_embedding."),
    (r"positional_embedding$", "text_model.embeddings.position_embedding.weight"),
    (r"transformer\.resblocks\.(\d+)\.", r"text_model.encoder.layers.\1."),
    (r"ln_final\.", "text_model.final_layer_norm."),
    (r"text_projection$", "text_projection.weight"),
]
OPEN_CLIP_PARTS: list[Rule] = [
    (r"\.ln_1\.", ".layer_norm1."),
    (r"\.ln_2\.", ".layer_norm2."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."),
    (r"\.mlp\.c_proj\.", ".mlp.fc2."),
    (r"\.attn\.out_proj\.", ".self_attn.out_proj."),
]
OPEN_CLIP_UNUSED = ("logit_scale", "attn_mask")  # CLIP's contrastive temperature; a buffer some exports save


def _indices(state: dict[str, Tensor], pattern: str) -> list[int]:
    return sorted({int(m[1]) for k in state if (m := re.match(pattern, k))})


def backbone_of_file(path: Path) -> str:
    """"sd15" | "sd21" | "sdxl" from the file's UNet tensors (see models.backbones), reading two at most."""
    names = set(tensor_names(path))
    proj = f"{UNET_PREFIX}middle_block.1.proj_in.weight"
    if proj not in names:
        raise WeightsError(f"{path} matches none of the backbones SD1.x, SD2.x, SDXL: it has no "
                           f"{proj} (the UNet's middle transformer in the original layout); give a diffusers "
                           f"folder, an original-layout single file, or a hub id")
    if f"{UNET_PREFIX}label_emb.0.0.weight" in names:
        return "sdxl"
    return "sd21" if read_state_dict(path, proj)[proj].ndim == 2 else "sd15"


def _read(path: Path, prefix: str, what: str) -> dict[str, Tensor]:
    state = strip_prefix(read_state_dict(path, prefix), prefix)
    if not state:
        raise WeightsError(f"{path} has no {what} weights (no keys starting with {prefix!r}); is it a "
                           f"single-file SD checkpoint in the original layout?")
    return state


def _infer(path: Path, what: str, infer, state: dict[str, Tensor], given=None):
    """The config the shapes imply; `given` when they imply none (it is only compared with, for hints)."""
    try:
        return infer(state)
    except (KeyError, ValueError, ZeroDivisionError) as e:
        if given is not None:
            return given
        raise WeightsError(f"{path}: cannot infer the {what} config from tensor shapes ({type(e).__name__}: "
                           f"{e} after renaming to diffusers names); is it an SD1.x/2.x/XL checkpoint? "
                           f"Else pass its config") from e


def infer_unet_config(state: dict[str, Tensor], pooled_text_dim: int | None = None) -> UNetConfig:
    """pooled_text_dim: SDXL's pooled text width, from the file's second text model (else SDXL's own 1280
    with 256-wide size embeddings): the added MLP's input is pooled + 6 x size width, not split in the tensors."""
    levels = len(_indices(state, r"down_blocks\.(\d+)\."))
    channels = tuple(state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels))
    attention = tuple(f"down_blocks.{i}.attentions.0.proj_in.weight" in state for i in range(levels))
    context_dim = state["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape[1]
    linear_proj = state["mid_block.attentions.0.proj_in.weight"].ndim == 2
    depth = tuple(len(_indices(state, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.")) or 1
                  for i in range(levels))
    added = state.get("add_embedding.linear_1.weight")
    time_dim = pooled = 0
    if added is not None:
        time_dim = SDXL_TIME_EMBED_DIM if pooled_text_dim is None else (added.shape[1] - pooled_text_dim) // 6
        pooled = added.shape[1] - 6 * time_dim
    cfg = UNetConfig(
        block_channels=channels,
        attention_levels=attention,
        heads=tuple(c // SD2_HEAD_DIM for c in channels) if linear_proj else (SD1_HEADS,) * levels,
        layers_per_block=len(_indices(state, r"down_blocks\.0\.resnets\.(\d+)\.")),
        context_dim=context_dim,
        linear_proj=linear_proj,
        in_channels=state["conv_in.weight"].shape[1],
        out_channels=state["conv_out.weight"].shape[0],
        norm_groups=SD_NORM_GROUPS,
        prediction_type="v_prediction" if linear_proj and added is None else "epsilon",  # SD2.x-768: v
        transformer_depth=None if set(depth) == {1} else depth,
        addition_time_embed_dim=time_dim,
        pooled_text_dim=pooled,
    )
    if context_dim != BACKBONES[backbone_of(cfg)].context_dim:
        raise ValueError(f"context width {context_dim} is not {backbone_of(cfg)}'s {BACKBONES[backbone_of(cfg)].context_dim}")
    return cfg


def infer_vae_config(state: dict[str, Tensor], scaling_factor: float = VAEConfig.scaling_factor) -> VAEConfig:
    levels = len(_indices(state, r"encoder\.down_blocks\.(\d+)\."))
    return VAEConfig(
        block_channels=tuple(state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels)),
        layers_per_block=len(_indices(state, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")),
        latent_channels=state["post_quant_conv.weight"].shape[0],
        norm_groups=SD_NORM_GROUPS,
        scaling_factor=scaling_factor,
    )


def infer_text_config(state: dict[str, Tensor], open_clip: bool = False) -> CLIPTextConfig:
    """OpenAI's CLIP ViT-L/14 (SD1.x, SDXL's first) uses quick-GELU, OpenCLIP's towers (SD2.x, SDXL's
    second) GELU; 64-wide heads in all."""
    vocab, width = state["text_model.embeddings.token_embedding.weight"].shape
    projection = state.get("text_projection.weight")
    return CLIPTextConfig(
        vocab_size=vocab, hidden_size=width, num_attention_heads=width // 64,
        hidden_act="gelu" if open_clip else "quick_gelu",
        intermediate_size=state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=len(_indices(state, r"text_model\.encoder\.layers\.(\d+)\.")),
        max_position_embeddings=state["text_model.embeddings.position_embedding.weight"].shape[0],
        projection_dim=projection.shape[0] if projection is not None else width,
    )


def pooled_text_dim(path: Path) -> int | None:
    """SDXL: the width of the second text model's projection, when the file has one."""
    key = f"{SDXL_TEXT_PREFIXES[1]}text_projection"
    state = read_state_dict(path, key)
    return state[key].shape[1] if key in state else None


def read_unet(path: Path, config=None) -> Checkpoint:
    state = _read(path, UNET_PREFIX, "UNet")
    downsamplers = _indices(state, r"input_blocks\.(\d+)\.0\.op\.")
    k = downsamplers[0] if downsamplers else len(_indices(state, r"input_blocks\.(\d+)\."))
    state = rename_parts(rename_prefix(state, unet_rules(k)), RESBLOCK_PARTS)
    pooled = pooled_text_dim(path) if "add_embedding.linear_1.weight" in state else None
    return Checkpoint(state, _infer(path, "UNet", lambda s: infer_unet_config(s, pooled), state, config), path)


def read_vae(path: Path, config=None) -> Checkpoint:
    state = _read(path, VAE_PREFIX, "VAE")
    state = rename_parts(rename_prefix(state, vae_rules(len(_indices(state, r"decoder\.up\.(\d+)\.")))), VAE_PARTS)
    # the original's attention projections are 1x1 convolutions: (C, C, 1, 1) -> Linear's (C, C)
    state = {k: v[:, :, 0, 0] if v.ndim == 4 and VAE_ATTENTION_WEIGHT.fullmatch(k) else v for k, v in state.items()}
    # the file does not store its latent scale: SDXL's VAE has its own (the backbone shows in the UNet;
    # a file without one, a VAE alone, takes SD's)
    xl = any(k.startswith(f"{UNET_PREFIX}label_emb.") for k in tensor_names(path))
    scale = BACKBONES["sdxl" if xl else "sd15"].vae.scaling_factor
    return Checkpoint(state, _infer(path, "VAE", lambda s: infer_vae_config(s, scale), state, config), path)


def open_clip_to_transformers(state: dict[str, Tensor], drop_last_layer: bool) -> dict[str, Tensor]:
    """OpenCLIP text-tower keys -> transformers' CLIPText keys: the fused attention in_proj (q, k, v rows)
    split into q_proj / k_proj / v_proj, text_projection (width, proj) transposed into a Linear's weight.
    drop_last_layer: SD2.x conditions on the penultimate layer, so its last is never run (diffusers'
    SD2 folders leave it out too)."""
    state = {k: v for k, v in state.items() if k not in OPEN_CLIP_UNUSED}
    if drop_last_layer:
        last = _indices(state, r"transformer\.resblocks\.(\d+)\.")[-1]
        state = {k: v for k, v in state.items() if not k.startswith(f"transformer.resblocks.{last}.")}
        state.pop("text_projection", None)  # the projection acts on the final layer's output: unused too
    out = {}
    for key, value in rename_parts(rename_prefix(state, OPEN_CLIP_RULES), OPEN_CLIP_PARTS).items():
        fused = re.fullmatch(r"(.*)\.attn\.in_proj_(weight|bias)", key)
        if fused:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{fused[1]}.self_attn.{name}.{fused[2]}"] = part.contiguous()
        else:
            out[key] = value.T.contiguous() if key == "text_projection.weight" else value
    return out


def read_text_encoders(path: Path, config=None) -> list[Checkpoint]:  # config: one, or one per text model
    """The file's text models in transformers' `text_model.*` layout (its loader adapts them to the
    installed version): one for SD1.x and SD2.x, two for SDXL (the second with its projection)."""
    backbone = backbone_of_file(path)
    prefixes = TEXT_PREFIXES[backbone]
    configs = list(config) if isinstance(config, (list, tuple)) else [config] * len(prefixes)  # one per model
    ckpts = []
    for prefix, given in zip(prefixes, configs):
        state = _read(path, prefix, "text model")
        open_clip = prefix.endswith(".model.")
        if open_clip:
            state = open_clip_to_transformers(state, drop_last_layer=backbone == "sd21")
        infer = lambda s, o=open_clip: infer_text_config(s, o)  # noqa: E731
        ckpts.append(Checkpoint(state, _infer(path, "text model", infer, state, given), path))
    return ckpts
