"""nn.Modules only: the SD UNet, the VAE, attention blocks, text/image encoders."""
from .attention import KV, ImagePrompt
from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

__all__ = ["KV", "ImagePrompt", "UNet", "UNetConfig", "AutoencoderKL", "VAEConfig"]
