"""Fetching, verifying and loading checkpoints: diffusers folders, original single-file
checkpoints and hub model ids, into the modules of models/.

    unet = weights.load_unet(src, dtype=torch.float16, device="cuda")   # src: folder, file or model id
    vae = weights.load_vae(src)
    text_encoder = weights.load_text_encoder(src)
    folder = weights.resolve("stable-diffusion-v1-5/stable-diffusion-v1-5")  # fetch (when online)

Command line: `python -m weights.fetch [MODEL_ID]`.
"""
from .errors import WeightsError, WeightsNotFoundError
from .hub import DEFAULT_MODEL, cache_dir, download, resolve
from .load import load_text_encoder, load_unet, load_vae

__all__ = ["WeightsError", "WeightsNotFoundError", "DEFAULT_MODEL", "cache_dir", "download", "resolve",
           "load_text_encoder", "load_unet", "load_vae"]
