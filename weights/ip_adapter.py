"""IP-Adapter-Plus (h94/IP-Adapter) into our Resampler and UNet; its CLIP image encoder.

The official checkpoint layout (tencent-ailab/IP-Adapter `IPAdapter.load_ip_adapter`): a .bin
holds two nested dicts `{"image_proj": ..., "ip_adapter": ...}`, a .safetensors the same keys
flattened with those prefixes.

    image_proj.<name>             -> Resampler.<name> (models/resampler.py keeps the names)
    ip_adapter.<n>.to_k_ip.weight -> the cross-attention's to_k_ip (to_v_ip likewise)

n numbers the attention processors of diffusers' UNet in `unet.attn_processors` order (the
official code saves `ModuleList(unet.attn_processors.values())`; diffusers' loader
`_convert_ip_adapter_attn_to_diffusers` reads `{key_id}.to_k_ip.weight`, key_id = 1, 3, 5, ...).
That order is module registration order, where diffusers registers `up_blocks` before
`mid_block`: down blocks, up blocks, then the mid block. attn1 and attn2 alternate, so the k-th
cross-attention in that order is n = 2k + 1 (SD1.5: down 1..11, up 13..29, mid 31).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from transformers import CLIPVisionModelWithProjection

from models.attention import CrossAttention
from models.backbones import BACKBONES
from models.image_encoder import ImageEncoder, clip_image_processor
from models.resampler import Resampler, ResamplerConfig
from models.unet import UNet

from .errors import WeightsError, WeightsNotFoundError
from .files import PathLike, check_state_dict, read_state_dict
from .hub import MODEL_ID, fetch_files

IP_ADAPTER_REPO = "h94/IP-Adapter"
# The reference loads `models/ip-adapter-plus_sd15.bin` (region_utils/cycle_sde.py); the repo holds
# the same weights as .safetensors too, which loads without unpickling. For SDXL the Plus adapter
# that takes CLIP ViT-H patch features (the reference loads the plain `ip-adapter_sdxl.bin`, whose
# projection expects a pooled embedding, and feeds it patch features). SD2.x has none. Per backbone:
# models.backbones.
IP_ADAPTER_FILES = {name: b.ip_adapter_file for name, b in BACKBONES.items() if b.ip_adapter_file}
IP_ADAPTER_FILE = IP_ADAPTER_FILES["sd15"]
IMAGE_ENCODER_FOLDER = "image_encoder"  # beside the adapter file: diffusers' `load_ip_adapter` default
# both adapters take CLIP ViT-H/14 (2.5 GB), which lives in models/ (sdxl_models/image_encoder is ViT-bigG)
ENCODER_FOLDER = f"models/{IMAGE_ENCODER_FOLDER}"


def ip_adapter_files(src: PathLike = IP_ADAPTER_REPO, backbone: str = "sd15") -> tuple[Path, Path]:
    """(adapter file, image-encoder folder) of `src` for `backbone`: an adapter file (the encoder folder
    is its sibling `image_encoder/`), a folder laid out like h94/IP-Adapter, or a hub id laid out so: its
    snapshot in the weights cache, fetched when missing unless the hub is offline."""
    if backbone not in IP_ADAPTER_FILES:
        raise WeightsError(f"there is no IP-Adapter-Plus for {backbone} ({IP_ADAPTER_REPO} has adapters for "
                           f"{' and '.join(IP_ADAPTER_FILES)} only): drop the IP-Adapter (CLI: --ip-adapter)")
    name = IP_ADAPTER_FILES[backbone]
    path = Path(src).expanduser()
    if not path.exists() and MODEL_ID.fullmatch(str(src)):
        path = fetch_ip_adapter(str(src), backbone)
    adapter, folder = (path / name, path / ENCODER_FOLDER) if path.is_dir() else (path, path.parent / IMAGE_ENCODER_FOLDER)
    missing = [str(p) for p in (adapter, folder / "config.json") if not p.exists()]
    if missing:
        raise WeightsNotFoundError(f"IP-Adapter files not found: {', '.join(missing)}; get {name} and "
                                   f"{ENCODER_FOLDER}/ from {IP_ADAPTER_REPO}, or pass that hub id")
    return adapter, folder


def fetch_ip_adapter(repo: str = IP_ADAPTER_REPO, backbone: str = "sd15") -> Path:
    """The snapshot of `repo` (laid out like h94/IP-Adapter) holding the backbone's adapter and the image
    encoder, from the weights cache or fetched into it (see hub.fetch_files)."""
    files = (IP_ADAPTER_FILES[backbone], f"{ENCODER_FOLDER}/config.json", f"{ENCODER_FOLDER}/model.safetensors")
    return fetch_files(repo, files, fetch_option="--ip-adapter",
                       local="`--ip-adapter PATH` (an adapter file, or a folder laid out like h94/IP-Adapter)")


def cross_attention_paths(unet: UNet) -> list[str]:
    """Our cross-attention module paths in diffusers' attention-processor order (see top)."""
    paths = [name for name, m in unet.named_modules() if isinstance(m, CrossAttention)]
    order = ("down_blocks", "up_blocks", "mid_block")
    return sorted(paths, key=lambda p: order.index(p.split(".")[0]))  # stable: keeps order inside a group


def ip_adapter_key_map(unet: UNet, resampler: Resampler) -> dict[str, Tensor]:
    """Official key -> the tensor of ours it loads into."""
    targets = {f"image_proj.{k}": v for k, v in resampler.state_dict().items()}
    modules = dict(unet.named_modules())
    for k, path in enumerate(cross_attention_paths(unet)):
        attn = modules[path]
        targets[f"ip_adapter.{2 * k + 1}.to_k_ip.weight"] = attn.to_k_ip.weight
        targets[f"ip_adapter.{2 * k + 1}.to_v_ip.weight"] = attn.to_v_ip.weight
    return targets


def resampler_config(state: dict[str, Tensor], path: PathLike) -> ResamplerConfig:
    """The Resampler's config from the checkpoint's tensor shapes (dim_head is always 64 in
    IP-Adapter's Resampler, so heads = to_q rows / 64)."""
    try:
        _, queries, dim = state["image_proj.latents"].shape
        ff_rows = state["image_proj.layers.0.1.1.weight"].shape[0]
        return ResamplerConfig(
            num_queries=queries, dim=dim,
            depth=len({k.split(".")[2] for k in state if k.startswith("image_proj.layers.")}),
            heads=state["image_proj.layers.0.0.to_q.weight"].shape[0] // ResamplerConfig.dim_head,
            embedding_dim=state["image_proj.proj_in.weight"].shape[1],
            output_dim=state["image_proj.proj_out.weight"].shape[0], ff_mult=ff_rows // dim)
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{path} is not an IP-Adapter-Plus checkpoint: no Resampler tensor {e} "
                           f"(plain IP-Adapter has image_proj.proj.weight instead)") from None


@torch.no_grad()
def load_ip_adapter(path: PathLike, unet: UNet, cfg: Optional[ResamplerConfig] = None) -> Resampler:
    """Give `unet` the adapter's to_k_ip / to_v_ip and return its Resampler (from `cfg`, or the
    checkpoint's shapes; on the CPU in fp32), strictly: every key used, every tensor loaded."""
    state = read_state_dict(path)  # a .bin's nested {"image_proj": ..., "ip_adapter": ...} comes flat
    resampler = Resampler(cfg or resampler_config(state, path))
    unet.add_image_prompt_projections()
    targets = ip_adapter_key_map(unet, resampler)
    check_state_dict(path, "an IP-Adapter-Plus checkpoint for this UNet and resampler config",
                     {k: t.shape for k, t in targets.items()}, state,
                     "Likely cause: another adapter variant (plain IP-Adapter has image_proj.proj.weight, no "
                     "image_proj.latents), another SD version (SD1.5 has 16 cross-attentions: ip_adapter.1 ... "
                     "ip_adapter.31) or another resampler config.")
    for k, t in targets.items():
        t.copy_(state[k])
    return resampler


def load_image_encoder(folder: PathLike) -> ImageEncoder:
    """CLIP vision model from a transformers folder (config.json + weights), with its preprocessing."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise WeightsNotFoundError(f"no image encoder at {folder}: expected config.json and model weights "
                                   f"(h94/IP-Adapter models/{IMAGE_ENCODER_FOLDER}/)")
    model = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    return ImageEncoder(model, clip_image_processor(model.config.image_size))
