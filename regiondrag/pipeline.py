"""The RegionDrag pipeline: invert, map, copy-paste, denoise — top to bottom in `edit`.

    pipe = RegionDragPipeline.from_pretrained()            # SD1.5 (+ IP-Adapter-Plus if given)
    result = pipe.edit("photo.png", regions, prompt="")   # result.image is a PIL image

Defaults are the reference implementation's evaluation settings (see DEFAULTS below).
The inversion of an image (latents, noises, self-attention K/V, conditioning) does not
depend on the regions, so it is cached: a second edit of the same image with new regions
runs only the denoising half.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from models.attention import ImagePrompt
from models.unet import Conditioning, Context, UNet
from models.vae import AutoencoderKL
from weights.backbones import backbone_of
from sampling import (START_T, STEPS, Grid, Trajectory, consistent_grid, denoise, invert, reference_grid,
                      scaled_linear_alphas_cumprod)

from .attention_swap import AttentionSwap, KVStore
from .copy_paste import END_T, add_handle_noise, paste, paste_steps, region_border
from .image_io import LATENT_STRIDE, MAX_SIDE, ImageLike, load_image, to_pil, to_tensor, working_size
from .image_prompt import IP_SCALES, ImagePrompter
from .mapping import Mapping, dense_mapping, editable_mask_to_latent, latent_size_of, subsample_pairs
from .regions import Region, RegionError

# The reference's evaluation settings (RegionDrag run_eval.py / DESIGN.md "Facts"); STEPS and START_T
# come from sampling.grids, END_T (no effect with the reference's paste schedule) from copy_paste.
NOISE_SCALE = 1.0    # handle noise s: pure noise at handle positions
SEED = 42

METHODS = {  # ours -> the reference UI's names
    "encode_then_cp": "Encode then CP",  # cycle-SDE inversion of the photo, paste latents (default)
    "cp_then_encode": "CP then Encode",  # DDIM inversion of a pixel copy-pasted preview
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}  # CLI names
GRIDS = {"reference": reference_grid, "consistent": consistent_grid}
# Per backbone (weights.backbones): the long side the reference works at (region_utils/drag.py);
# edit's `max_side` and `ip_scale` default to the pipeline's backbone's (IP_SCALES in image_prompt)
WORKING_SIZES = {"sd15": MAX_SIDE, "sd21": 768, "sdxl": 1024}
BY_BACKBONE = "backbone"


@dataclass
class Inversion:
    """Everything the denoising half needs from one image, independent of the regions."""
    latents: list[Tensor]        # x at every inversion level, latents[0] the encoded photo
    noises: list[Tensor]         # cycle-SDE noises in inversion order (empty for DDIM)
    kv: KVStore                  # self-attention K/V of every inversion UNet call
    context: Context             # (1, 77, C) prompt embedding; SDXL: a Conditioning (+ pooled, size ids)
    image_prompt: Optional[ImagePrompt]
    generator_state: Tensor      # RNG state after inversion, so a re-edit draws what an edit draws


@dataclass
class EditResult:
    image: Image.Image                    # the edited photo, at the input's size
    mapping: Mapping                      # latent-resolution handle -> target pairs used
    preview: Optional[Image.Image] = None # CP-then-Encode's copy-pasted photo (working size)
    inversion: Optional[Inversion] = None # with return_intermediates
    denoising: Optional[Trajectory] = None
    timings: dict = field(default_factory=dict)


def default_device_dtype(device: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> tuple[str, torch.dtype]:
    """The given ones, else cuda when available (cpu otherwise) and fp16 on cuda (the reference's), fp32 elsewhere."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RegionDragPipeline:
    def __init__(self, unet: UNet, vae: AutoencoderKL, text_encoder: Callable[[str], Context],
                 image_prompter: Optional[Callable[[Image.Image, float], ImagePrompt]] = None):
        """image_prompter: (photo, scale) -> IP-Adapter image tokens, e.g. an ImagePrompter.
        The backbone (sd15 / sd21 / sdxl, from the UNet's structure) picks edit's working size and IP scale."""
        self.unet, self.vae, self.text_encoder, self.image_prompter = unet, vae, text_encoder, image_prompter
        self.backbone = backbone_of(unet.cfg)
        p = next(unet.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.alphas_cumprod = scaled_linear_alphas_cumprod()
        self._cache: tuple[tuple, Inversion] | None = None  # the last image's inversion
        self._timesteps: dict[int, Tensor] = {}

    @classmethod
    def from_pretrained(cls, src: Optional[str] = None, *, model: str = "sd15", vae: Optional[str] = None,
                        ip_adapter: Optional[str] = None, ip_reference_layout: bool = True,
                        device: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> "RegionDragPipeline":
        """Load SD weights (a diffusers folder, a single-file checkpoint or a hub id; default: the hub id
        of backbone `model`), the VAE from `vae` if given (e.g. an fp16-safe SDXL VAE), and
        IP-Adapter-Plus from `ip_adapter` if given (32 image tokens as the reference passes them,
        or its own 16 with ip_reference_layout=False)."""
        import weights

        device, dtype = default_device_dtype(device, dtype)
        src = src or weights.HUB_IDS[model]
        unet = weights.load_unet(src, dtype=dtype, device=device)
        prompter = None
        if ip_adapter:  # before the rest: SD2.x has no adapter, which should not wait for the text encoder
            prompter = ImagePrompter.from_pretrained(unet, ip_adapter, reference_layout=ip_reference_layout,
                                                     dtype=dtype, device=device)
        vae = weights.load_vae(vae or src, dtype=dtype, device=device)
        text_encoder = weights.load_text_encoder(src, dtype=dtype, device=device)
        return cls(unet, vae, text_encoder, prompter)

    def cached_inversion(self) -> Optional[Inversion]:
        return None if self._cache is None else self._cache[1]

    def clear_cache(self) -> None:
        """Forget the cached inversion (its K/V are ~0.5 GB at 512px in fp16)."""
        self._cache = None

    def compile(self, mode: str = "max-autotune-no-cudagraphs", backend="inductor") -> None:
        """torch.compile the UNet and both VAE halves; the first edit at each size compiles.

        Attention control is plain arguments, so the UNet traces as one graph (fullgraph=True)
        per K/V pattern: record, replay all layers, or a chosen subset.
        """
        options = dict(backend=backend, dynamic=False, **({"mode": mode} if backend == "inductor" else {}))
        self.unet.forward = torch.compile(self.unet.forward, fullgraph=True, **options)
        self.unet.forward_recording_kv = torch.compile(self.unet.forward_recording_kv, fullgraph=True, **options)
        self.vae.encode_moments = torch.compile(self.vae.encode_moments, **options)
        self.vae.decode = torch.compile(self.vae.decode, **options)

    def _timestep(self, t: int) -> Tensor:
        """Timesteps as device tensors (made once): a Python int would be a compile-time constant."""
        if t not in self._timesteps:
            self._timesteps[t] = torch.tensor(t, device=self.device)
        return self._timesteps[t]

    # -- the method ------------------------------------------------------------------------

    @torch.no_grad()
    def edit(self, image: ImageLike, regions: Optional[Sequence[Region]] = None, prompt: str = "",
             mask: Optional[np.ndarray] = None, *, mapping: Optional[Mapping] = None, steps: int = STEPS, start_t: float = START_T, end_t: float = END_T, noise_scale: float = NOISE_SCALE,
             seed: int = SEED, method: str = "encode_then_cp", ip_scale: float | str = BY_BACKBONE, grid: str = "reference",
             paste_schedule: str = "every_step", attention_swap: AttentionSwap = AttentionSwap(),
             point_fraction: float = 1.0, max_side: Optional[int] | str = BY_BACKBONE, return_intermediates: bool = False,
             progress: bool = True) -> EditResult:
        """Move the content of each handle region to its target region.

        regions: parsed region pairs in the photo's pixel coordinates (see regiondrag.regions).
        mapping: instead of regions, latent (handle_xy, target_xy) pairs of the working size
            (e.g. DragBench-SR/DR's precomputed dense pairs, see regiondrag.dragbench).
        mask: optional editable mask (H, W), nonzero = may change; outside it the photo is kept.
        """
        if (regions is None) == (mapping is None):
            raise ValueError("give either regions or a precomputed mapping, not both or neither")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if grid not in GRIDS:
            raise ValueError(f"unknown grid {grid!r}; choose one of {', '.join(GRIDS)}")
        max_side = WORKING_SIZES[self.backbone] if max_side == BY_BACKBONE else max_side
        ip_scale = IP_SCALES.get(self.backbone, 0.0) if ip_scale == BY_BACKBONE else ip_scale
        timings, clock = {}, time.perf_counter()
        photo = load_image(image)
        size = working_size(*photo.size, max_side)
        work = photo.resize(size, Image.BICUBIC) if size != photo.size else photo
        sde = method == "encode_then_cp"
        schedule: Grid = GRIDS[grid](steps, start_t)

        # 1. dense mapping at latent resolution, in working-size coordinates
        if mapping is None:
            mapping = dense_mapping(regions, photo.size, latent_size_of(size))
        if point_fraction < 1:
            mapping = subsample_pairs(mapping, point_fraction, seed)
        handle, target = (torch.as_tensor(a, device=self.device, dtype=torch.long) for a in mapping)
        editable = None
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != photo.size[::-1]:
                raise RegionError(f"the editable mask is {mask.shape[1]}x{mask.shape[0]} but the photo is "
                                  f"{photo.width}x{photo.height}; give a mask of the photo's size")
            editable = torch.from_numpy(editable_mask_to_latent(mask, latent_size_of(size))).to(self.device)
        timings["mapping_s"] = time.perf_counter() - clock

        # 2. inversion of the photo (cached across edits of the same photo and settings)
        inv = self.invert(work, prompt, steps=steps, start_t=start_t, seed=seed, sde=sde, ip_scale=ip_scale,
                          grid=grid, progress=progress, timings=timings)
        generator = torch.Generator(self.device).set_state(inv.generator_state)

        # 3. what is pasted from where, and the start latent with noised handles
        preview = None
        if sde:
            hooks, noises, start = inv.latents, inv.noises[::-1], inv.latents[-1]
            copy_from, noised = handle, handle
        else:  # CP then Encode: the preview's DDIM inversion supplies the latents to paste
            clock = time.perf_counter()
            preview = self.preview(work, regions, photo.size, mapping)
            preview_latent = self.encode(to_tensor(preview, self.device, self.dtype), generator)
            hooks = invert(self._model(inv.context, inv.image_prompt), preview_latent, schedule, self.alphas_cumprod,
                           sde=False, prediction_type=self.unet.cfg.prediction_type, disable=not progress).latents
            noises, start = None, inv.latents[-1]
            copy_from, noised = target, torch.cat([region_border(target, start.shape[-2:]), handle])
            timings["preview_inversion_s"] = time.perf_counter() - clock
        start = add_handle_noise(start, noised, noise_scale, generator)

        # 4. denoising with multi-step copy-paste and attention swap
        clock = time.perf_counter()
        n = len(schedule.denoising)
        pastes = paste_steps([t for t, _ in schedule.denoising], paste_schedule, end_t)

        def before_step(j: int, t: int, x: Tensor) -> Tensor:
            stored = hooks[n - j]  # the inversion latent at this step's noise level
            if pastes[j]:
                x = paste(x, stored, copy_from, target)
            return x if editable is None else torch.where(editable, x, stored)

        def replay(x: Tensor, t: int, j: int) -> Tensor:
            return self.unet(x, self._timestep(t), inv.context, kv=inv.kv.replay(j, attention_swap),
                             image_prompt=inv.image_prompt)

        denoised = denoise(replay, start, schedule, self.alphas_cumprod, eta=1.0 if sde else 0.0, noises=noises,
                           before_step=before_step, prediction_type=self.unet.cfg.prediction_type,
                           disable=not progress)
        _sync(self.device)
        timings["denoising_s"] = time.perf_counter() - clock

        # 5. decode, back to the photo's size, original pixels outside the editable mask
        clock = time.perf_counter()
        edited = to_pil(self.decode(denoised.latents[-1]))
        if edited.size != photo.size:
            edited = edited.resize(photo.size, Image.BICUBIC)
        if mask is not None:
            keep = mask == 0  # an array since step 1
            edited = Image.fromarray(np.where(keep[..., None], np.asarray(photo), np.asarray(edited)))
        timings["decode_s"] = time.perf_counter() - clock
        return EditResult(edited, mapping, preview, inv if return_intermediates else None,
                          denoised if return_intermediates else None, timings)

    def invert(self, work: Image.Image, prompt: str, *, steps: int, start_t: float, seed: int, sde: bool,
               ip_scale: float, grid: str, progress: bool = True, timings: Optional[dict] = None) -> Inversion:
        """Encode the (working-size) photo and invert it, recording K/V; cached by content and settings."""
        key = (hashlib.sha1(work.tobytes()).hexdigest(), work.size, prompt, steps, start_t, seed, sde, ip_scale, grid)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        self._cache = None  # free the previous image's K/V before recording new ones
        timings = {} if timings is None else timings
        clock = time.perf_counter()
        generator = torch.Generator(self.device).manual_seed(seed)
        context = self.text_encoder(prompt).to(self.device, self.dtype)
        if isinstance(context, Conditioning):  # SDXL: the size time ids are the working image's
            context = context.at_size(*work.size)
        image_prompt = None
        if ip_scale and self.image_prompter is not None:
            image_prompt = self.image_prompter(work, ip_scale)
        _sync(self.device)
        timings["conditioning_s"] = time.perf_counter() - clock

        clock = time.perf_counter()
        latent = self.encode(to_tensor(work, self.device, self.dtype), generator)
        _sync(self.device)
        timings["encode_s"] = time.perf_counter() - clock

        clock = time.perf_counter()
        store = KVStore(self.unet.num_self_attention_layers)

        def record(x: Tensor, t: int, i: int) -> Tensor:
            eps, kvs = self.unet.forward_recording_kv(x, self._timestep(t), context, image_prompt=image_prompt)
            store.record(i, kvs)
            return eps

        traj = invert(record, latent, GRIDS[grid](steps, start_t), self.alphas_cumprod, sde=sde, generator=generator,
                      prediction_type=self.unet.cfg.prediction_type, disable=not progress)
        _sync(self.device)
        timings["inversion_s"] = time.perf_counter() - clock
        inv = Inversion(traj.latents, traj.noises, store, context, image_prompt, generator.get_state())
        self._cache = (key, inv)
        return inv

    # -- pieces ------------------------------------------------------------------------------

    def _model(self, context: Context, image_prompt: Optional[ImagePrompt]):
        return lambda x, t, i: self.unet(x, self._timestep(t), context, image_prompt=image_prompt)

    @staticmethod
    def preview(work: Image.Image, regions: Optional[Sequence[Region]], photo_size: tuple[int, int],
                mapping: Mapping) -> Image.Image:
        """The photo with each target's pixels copied from its handle: "CP then Encode"'s input.

        Regions are mapped at pixel resolution; a precomputed latent mapping moves 8x8 blocks.
        """
        if regions is not None:
            handle, target = dense_mapping(regions, photo_size, work.size)  # a 'latent' grid of stride 1
        else:
            block = np.stack(np.meshgrid(np.arange(LATENT_STRIDE), np.arange(LATENT_STRIDE)), -1).reshape(-1, 2)
            handle, target = ((np.asarray(a)[:, None] * LATENT_STRIDE + block).reshape(-1, 2) for a in mapping)
        a = np.asarray(work).copy()
        a[target[:, 1], target[:, 0]] = a[handle[:, 1], handle[:, 0]]
        return Image.fromarray(a)

    def encode(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """A sample of the VAE posterior, scaled (the reference samples rather than takes the mean)."""
        mean, logvar = self._vae_finite(self.vae.encode_moments, images)
        return self.vae.sample(mean, logvar, generator) * self.vae.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        if not torch.isfinite(latents).all():
            raise FloatingPointError(f"the denoised latent has NaN/inf values in {self.dtype}; "
                                     "run with dtype=torch.float32 (CLI: --dtype fp32) or bfloat16")
        return self._vae_finite(self.vae.decode, latents / self.vae.scaling_factor)

    def _vae_finite(self, fn, x: Tensor):
        """Run a VAE half; if fp16 overflows (the SD VAE can), redo it in fp32 and say so."""
        out = fn(x)
        first = out[0] if isinstance(out, tuple) else out
        if self.dtype == torch.float32 or torch.isfinite(first).all():
            return out
        warnings.warn("the VAE overflowed in float16; recomputed in float32", RuntimeWarning)
        self.vae.float()
        try:
            out = fn(x.float())
        finally:
            self.vae.to(self.dtype)
        return tuple(o.to(self.dtype) for o in out) if isinstance(out, tuple) else out.to(self.dtype)
