"""Shared fixtures: tiny model settings and folders of random weights in diffusers' layout.

    folder = save_diffusers_folder(tmp_path)   # unet/ vae/ text_encoder/ tokenizer/ scheduler/
    def test_something(tiny_sd_folder): ...    # the same folder, built once per session

TINY_UNET / TINY_VAE are diffusers' settings for our UNetConfig.tiny() / VAEConfig.tiny();
TINY_CLIP is a 2-layer CLIP text model whose width is the tiny UNet's context width.
`sd15_folder` (slow tests only: ~4 GB, ~40 s) holds a UNet and a VAE of SD1.5's shapes.
"""
import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

# let a bare `pytest` import the top-level packages without an editable install
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY_UNET = dict(block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, cross_attention_dim=32,
                 attention_head_dim=2, norm_num_groups=8, sample_size=16)
TINY_VAE = dict(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4, norm_num_groups=4,
                sample_size=32)
# SD2.x's structure at tiny size: linear projections, heads per level (v-prediction is the scheduler's)
TINY_SD2_UNET = dict(TINY_UNET, use_linear_projection=True, attention_head_dim=(2, 4),
                     down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2)
# SDXL's structure at tiny size (UNetConfig.tiny_sdxl()): no attention at level 0, transformer depth 2 and 3,
# linear projections, the text_time added embedding (pooled 16 + 6 x 8)
TINY_SDXL_UNET = dict(block_out_channels=(32, 64, 64), layers_per_block=2,
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                      transformer_layers_per_block=(1, 2, 3), attention_head_dim=(2, 2, 4), cross_attention_dim=48,
                      use_linear_projection=True, norm_num_groups=8, addition_embed_type="text_time",
                      addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8, sample_size=16)
# SDXL base 1.0's unet/config.json (stabilityai/stable-diffusion-xl-base-1.0), diffusers' defaults otherwise
SDXL_UNET = dict(block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, sample_size=128)
# SD1.5's real shapes (diffusers' defaults otherwise), for the slow tests
SD15_UNET = dict(cross_attention_dim=768)
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512)
# A CLIP BPE vocabulary in the hub files' format: characters, word-final characters (</w>), merges.
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
TOKENS = LETTERS + [c + "</w>" for c in LETTERS] + ["th", "the</w>", "<|startoftext|>", "<|endoftext|>"]
MERGES = ["t h", "th e</w>"]
TINY_CLIP = dict(vocab_size=len(TOKENS), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=77, bos_token_id=TOKENS.index("<|startoftext|>"),
                 eos_token_id=TOKENS.index("<|endoftext|>"), pad_token_id=TOKENS.index("<|endoftext|>"))
# SDXL's second text encoder at tiny size: OpenCLIP-style (GELU, 64-wide heads), 3 layers, projected
# pooled embedding; 32 + 16 = the tiny SDXL UNet's 48-wide context, projection 16 its pooled width
TINY_CLIP_2 = dict(TINY_CLIP, hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=1,
                   hidden_act="gelu", projection_dim=16)
TINY_OPEN_CLIP = dict(TINY_CLIP, hidden_act="gelu")  # SD2.x's text model is OpenCLIP's: GELU, not quick-GELU
TINY_SDXL_VAE = dict(TINY_VAE, scaling_factor=0.13025)  # SDXL's VAE config records its latent scale


def randomize_norms(model: nn.Module) -> nn.Module:
    """Default init leaves norm scales at 1 and shifts at 0, which would hide swapped norm keys."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, 0.1)
    return model


def write_clip_tokenizer(folder: Path) -> Path:
    """The four files of SD1.5's tokenizer/ on the hub (transformers 5 would save tokenizer.json instead)."""
    folder.mkdir(parents=True, exist_ok=True)
    special = dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                   pad_token="<|endoftext|>")
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(TOKENS)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(
        special, model_max_length=77, do_lower_case=True, tokenizer_class="CLIPTokenizer")))
    return folder


def save_diffusers_folder(root: Path, unet: dict = TINY_UNET, vae: dict = TINY_VAE, text_encoder: dict = TINY_CLIP,
                          prediction_type: str = "epsilon", seed: int = 0, text_encoder_2: dict = None) -> Path:
    """A diffusers pipeline folder of random weights; pass None to leave a component out (SDXL's
    text_encoder_2/ and tokenizer_2/ are left out unless given)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    if unet is not None:
        randomize_norms(UNet2DConditionModel(**unet)).save_pretrained(root / "unet")
    if vae is not None:
        randomize_norms(AutoencoderKL(**vae)).save_pretrained(root / "vae")
    if text_encoder is not None:
        randomize_norms(CLIPTextModel(CLIPTextConfig(**text_encoder))).save_pretrained(root / "text_encoder")
        write_clip_tokenizer(root / "tokenizer")
    if text_encoder_2 is not None:
        model = CLIPTextModelWithProjection(CLIPTextConfig(**text_encoder_2))
        randomize_norms(model).save_pretrained(root / "text_encoder_2")
        write_clip_tokenizer(root / "tokenizer_2")
    # SD's noise schedule; prediction_type is where diffusers records SD2.1-768's v-prediction
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  prediction_type=prediction_type).save_config(root / "scheduler")
    return root


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory) -> Path:
    return save_diffusers_folder(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_sd2_folder(tmp_path_factory) -> Path:
    """A whole tiny SD2.1-768-style pipeline: linear-projection UNet predicting v, OpenCLIP-style text model."""
    return save_diffusers_folder(tmp_path_factory.mktemp("tiny_sd2"), unet=TINY_SD2_UNET, text_encoder=TINY_OPEN_CLIP,
                                 prediction_type="v_prediction", seed=4)


@pytest.fixture(scope="session")
def tiny_sdxl_folder(tmp_path_factory) -> Path:
    """A whole tiny SDXL pipeline: UNet (UNetConfig.tiny_sdxl()), VAE, both text encoders and tokenizers."""
    return save_diffusers_folder(tmp_path_factory.mktemp("tiny_sdxl"), unet=TINY_SDXL_UNET, vae=TINY_SDXL_VAE,
                                 text_encoder_2=TINY_CLIP_2, seed=3)


@pytest.fixture(scope="session")
def tiny_sdxl_unet_folder(tmp_path_factory) -> Path:
    return save_diffusers_folder(tmp_path_factory.mktemp("tiny_sdxl_unet"), unet=TINY_SDXL_UNET, vae=None,
                                 text_encoder=None, seed=2)


@pytest.fixture(scope="session")
def sd15_folder(tmp_path_factory) -> Path:
    return save_diffusers_folder(tmp_path_factory.mktemp("sd15"), unet=SD15_UNET, vae=SD15_VAE, text_encoder=None)


@pytest.fixture(scope="module")
def models():
    """A tiny SD1-shaped UNet and VAE of seeded random weights, and a random prompt embedding (drawn afresh,
    identically, for each test module)."""
    from models import AutoencoderKL, UNet, UNetConfig, VAEConfig

    torch.manual_seed(0)
    return UNet(UNetConfig.tiny()).eval(), AutoencoderKL(VAEConfig.tiny()).eval(), torch.randn(1, 77, 32)


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- allocation failures of every kind, raised the way each allocator raises it (no GPU here to run out of) --

def cuda_out_of_memory():
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of "
                                 "79.1 GiB of which 1.2 GiB is free.")


def cpu_allocator_failure():
    raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 3221225472 bytes. Error code 12 (Cannot allocate memory)")


def numpy_out_of_memory():
    np.empty((2**40, 2**20), np.uint8)  # 2^60 bytes: numpy refuses before asking the system


ALLOCATION_FAILURES = [(cuda_out_of_memory, "2.50 GiB"), (cpu_allocator_failure, "3.00 GiB"),
                       (numpy_out_of_memory, "1.00 EiB")]  # (raise it, the size the message must name)
