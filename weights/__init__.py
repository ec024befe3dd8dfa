"""Fetching, verifying and loading checkpoints: diffusers folders, original single-file
checkpoints and hub model ids, into the modules of models/.

    unet = weights.load_unet(src, dtype=torch.float16, device="cuda")   # src: folder, file or model id
    vae = weights.load_vae(src)
    text_encoder = weights.load_text_encoder(src)   # SDXL: both encoders, an SDXLTextEncoder
    folder = weights.resolve("stable-diffusion-v1-5/stable-diffusion-v1-5")  # fetch (when online)
    resampler = weights.load_ip_adapter(adapter_file, unet)    # IP-Adapter-Plus: to_k_ip/to_v_ip into unet
    lpips = weights.load_lpips()                               # the lpips package's heads, torchvision's AlexNet

Each backbone's facts (its hub id among them) are models.backbones.BACKBONES.
Command line: `python -m weights.fetch [MODEL_ID] [--ip-adapter h94/IP-Adapter]`.
"""
from .errors import WeightsError, WeightsNotFoundError
from .hub import DEFAULT_MODEL, cache_dir, download, resolve
from .ip_adapter import IP_ADAPTER_REPO, load_image_encoder, load_ip_adapter
from .load import load_text_encoder, load_unet, load_vae
from .lpips import load_lpips

__all__ = ["WeightsError", "WeightsNotFoundError", "DEFAULT_MODEL", "cache_dir", "download", "resolve",
           "load_text_encoder", "load_unet", "load_vae", "IP_ADAPTER_REPO", "load_ip_adapter", "load_image_encoder",
           "load_lpips"]
