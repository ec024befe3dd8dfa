"""The RegionDrag pipeline: map, invert, noise the handles, denoise with copy-paste — top to bottom in `edit`.

    pipe = RegionDragPipeline.from_pretrained()            # SD1.5 (+ IP-Adapter-Plus if given)
    result = pipe.edit("photo.png", regions, prompt="")   # result.image is a PIL image
    result = pipe.edit("photo.png", regions, config=pipe.config.replace(start_t=0.7))  # an ablation

The method's settings are one `EditConfig` (regiondrag.config; REFERENCE is the reference
implementation's evaluation settings); `edit(..., start_t=0.7)` is shorthand for that replace.
The inversion of an image (latents, noises, self-attention K/V, conditioning) does not
depend on the regions, so it is cached: a second edit of the same image with new regions
runs only the denoising half.

One deliberate difference from the reference: the decoded image is *rounded* to uint8
(image_io.to_pil), where the reference truncates (`astype(np.uint8)`), which darkens every
pixel by half a level on average for no purpose; parity tests compare before quantisation.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from models.attention import ImagePrompt
from models.backbones import BACKBONES, backbone_of
from models.folding import fold_upsamplers
from models.protocol import DenoisingUNet
from models.onednn import pack_convolutions, unpack_convolutions
from models.unet import Conditioning, Context, UNet
from models.vae import AutoencoderKL
from sampling import Grid, Trajectory, denoise, invert, matching_inversion_step, scaled_linear_alphas_cumprod

from .attention_swap import KVStore
from .config import (GRIDS, METHODS, NOISE_SCALE, REFERENCE, SEED, EditConfig,  # noqa: F401 (re-exported)
                     check_prompt)
from .copy_paste import add_handle_noise, paste, paste_steps, region_border
from .image_io import LATENT_STRIDE, ImageLike, load_image, to_pil, to_tensor, working_size
from .image_prompt import ImagePrompter
from .mapping import Mapping, dense_mapping, editable_mask_to_latent, latent_size_of, subsample_pairs
from .precision import default_dtype, unet_packed_convolutions, vae_channels_last, vae_folded_upsamplers
from .regions import Region, check_edit_inputs

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}  # CLI names
# torch.compile's modes without CUDA graphs -> the same with them (RegionDragPipeline.compile(cuda_graphs=True))
CUDA_GRAPH_MODES = {"max-autotune-no-cudagraphs": "max-autotune", "default": "reduce-overhead"}


def backbone_config(backbone: str) -> EditConfig:
    """REFERENCE at the backbone's working size and image-prompt scale (models.backbones): a pipeline's
    default config."""
    return REFERENCE.replace(max_side=BACKBONES[backbone].working_size, ip_scale=BACKBONES[backbone].ip_scale)


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
class PasteSource:
    """What the denoising loop pastes: latents[i + 1] (the level inversion step i reached) at cells
    `copy_from` into the target cells, the eta = 1 noises (None: DDIM), and the cells noised first."""
    latents: list[Tensor]
    noises: Optional[list[Tensor]]
    copy_from: Tensor
    noised: Tensor


@dataclass
class EditResult:
    image: Image.Image                    # the edited photo, at the input's size
    mapping: Mapping                      # latent-resolution handle -> target pairs used
    preview: Optional[Image.Image] = None # CP-then-Encode's copy-pasted photo (working size)
    inversion: Optional[Inversion] = None # with return_intermediates
    denoising: Optional[Trajectory] = None
    timings: dict = field(default_factory=dict)


def default_device_dtype(device: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> tuple[str, torch.dtype]:
    """The given ones, else cuda when available (cpu otherwise) and the device's default dtype (precision.py:
    fp16 on cuda, the reference's; on a CPU bf16 where it computes bf16 natively, else fp32)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, dtype or default_dtype(device)[0]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so wall-clock time counts it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """`with clock("denoising_s"): ...` adds that block's seconds (device work included) to clock.seconds."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        synchronize(self.device)
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


class RegionDragPipeline:
    def __init__(self, unet: DenoisingUNet, vae: AutoencoderKL, text_encoder: Callable[[str], Context],
                 image_prompter: Optional[Callable[[Image.Image, float], ImagePrompt]] = None):
        """image_prompter: (photo, scale) -> IP-Adapter image tokens, e.g. an ImagePrompter.
        The backbone (sd15 / sd21 / sdxl, from the UNet's structure) sets the default config's
        working size and IP scale."""
        self.unet, self.vae, self.text_encoder, self.image_prompter = unet, vae, text_encoder, image_prompter
        self.backbone = backbone_of(unet.cfg)
        self.config = backbone_config(self.backbone)
        p = next(unet.parameters())
        self.device, self.dtype = p.device, p.dtype
        if isinstance(vae, AutoencoderKL) and vae_channels_last(self.device, self.dtype):  # measured faster there
            vae.to(memory_format=torch.channels_last)
        if isinstance(vae, AutoencoderKL) and vae_folded_upsamplers(self.device, self.dtype):  # measured faster there
            fold_upsamplers(vae.decoder)
        if isinstance(unet, UNet) and unet_packed_convolutions(self.device, self.dtype):  # measured faster there
            pack_convolutions(unet)
        self.alphas_cumprod = scaled_linear_alphas_cumprod()
        self._cache: tuple[tuple, Inversion] | None = None  # the last image's inversion
        self._timesteps: dict[int, Tensor] = {}
        self._vae_fp32: Optional[AutoencoderKL] = None  # made on the first fp16 overflow (see _vae_finite)

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
        src = src or BACKBONES[model].hub_id
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

    def compile(self, mode: str = "max-autotune-no-cudagraphs", backend="inductor", cuda_graphs: bool = False) -> None:
        """torch.compile the UNet and both VAE halves; the first edit at each photo size compiles.

        Attention control is plain arguments, so the UNet traces as one graph (fullgraph=True)
        per K/V pattern: record, replay all layers, or a chosen subset. Shapes are static
        (dynamic=False): one set of graphs per photo size, none recompiled by later edits.
        cuda_graphs: the denoising half (the UNet calls that replay K/V, the decode) runs as CUDA
        graphs (inductor's cudagraph trees, on GPU; a no-op on CPU): each UNet call is one graph
        launch, and nothing in the loop waits for the GPU (timesteps and K/V are device tensors).
        """
        unpack_convolutions(self.unet)  # inductor packs a graph's weights itself
        options = dict(backend=backend, dynamic=False, **({"mode": mode} if backend == "inductor" else {}))
        graphs = dict(options, **({"mode": CUDA_GRAPH_MODES[mode]} if backend == "inductor" and cuda_graphs else {}))
        self.unet.forward = torch.compile(self.unet.forward, fullgraph=True, **graphs)
        self.unet.forward_recording_kv = torch.compile(self.unet.forward_recording_kv, fullgraph=True, **options)
        self.vae.encode_moments = torch.compile(self.vae.encode_moments, fullgraph=True, **options)
        self.vae.decode = torch.compile(self.vae.decode, fullgraph=True, **graphs)

    def _timestep(self, t: int) -> Tensor:
        """Timesteps as device tensors (made once): a Python int would be a compile-time constant."""
        if t not in self._timesteps:
            self._timesteps[t] = torch.tensor(t, device=self.device)
        return self._timesteps[t]

    # -- the method ------------------------------------------------------------------------

    @torch.no_grad()
    def edit(self, image: ImageLike, regions: Optional[Sequence[Region]] = None, prompt: str = "",
             mask: Optional[np.ndarray] = None, *, mapping: Optional[Mapping] = None,
             config: Optional[EditConfig] = None, return_intermediates: bool = False, progress: bool = True,
             **settings) -> EditResult:
        """Move the content of each handle region to its target region.

        regions: parsed region pairs in the photo's pixel coordinates (see regiondrag.regions).
        mapping: instead of regions, latent (handle_xy, target_xy) pairs of the working size
            (e.g. DragBench-SR/DR's precomputed dense pairs, see regiondrag.dragbench).
        mask: optional editable mask (H, W), nonzero = may change; outside it the photo is kept.
        config: default self.config (the reference's settings at this backbone's size and IP scale).
        settings: EditConfig fields overriding `config` (edit(..., start_t=0.7)).
        """
        config = self.config if config is None else config
        config = config.replace(**settings) if settings else config
        clock, photo, prompt = PhaseClock(self.device), load_image(image), check_prompt(prompt)
        work = self.working_photo(photo, config.max_side)
        check_edit_inputs(regions, mapping, mask, photo.size, latent_size_of(work.size))  # one-line errors, first
        swap = config.resolve_attention_swap(self.unet.self_attention_layer_names())
        grid = config.timestep_grid()
        with clock("mapping_s"):  # 1. dense mapping at latent resolution, in working-size coordinates
            mapping = self.map(regions, mapping, photo.size, work.size, config)
            handle, target = (torch.as_tensor(a, device=self.device, dtype=torch.long) for a in mapping)
            editable = self._editable_cells(mask, work.size)
        inv = self.invert(work, prompt, config, progress, clock)  # 2. cached across edits of this photo
        generator = torch.Generator(self.device).set_state(inv.generator_state)
        with clock("preview_inversion_s"):  # 3. what is pasted from where, and which cells are noised
            source, preview = self.paste_source(inv, handle, target, work, regions, photo.size, mapping, grid,
                                                config, generator, progress)
        x = add_handle_noise(inv.latents[-1], source.noised, config.noise_scale, generator)
        n, pastes = len(grid.denoising), paste_steps([t for t, _ in grid.denoising], config.paste_schedule, config.end_t)

        def before_step(j: int, t: int, x: Tensor) -> Tensor:  # 4a. paste the stored latent of this noise level
            stored = source.latents[matching_inversion_step(j, n) + 1]  # (inversion step n-1-j reached it)
            x = paste(x, stored, source.copy_from, target) if pastes[j] else x
            return x if editable is None else torch.where(editable, x, stored)  # the rest of the photo stays

        def unet(x: Tensor, t: int, j: int) -> Tensor:  # 4b. self-attention on the K/V recorded at this level
            return self.unet(x, self._timestep(t), inv.context, kv=inv.kv.replay(j, swap), image_prompt=inv.image_prompt)

        with clock("denoising_s"):  # 4. denoising, retracing the inversion's cycle-SDE noises (none: DDIM)
            noises = None if source.noises is None else [source.noises[matching_inversion_step(j, n)] for j in range(n)]
            traj = denoise(unet, x, grid, self.alphas_cumprod, eta=0.0 if noises is None else 1.0, noises=noises,
                           before_step=before_step, prediction_type=self.prediction_type, disable=not progress)

        with clock("decode_s"):  # 5. decode, back to the photo's size, original pixels outside the mask
            edited = self._paste_back(to_pil(self.decode(traj.latents[-1])), photo, mask)
        return EditResult(edited, mapping, preview, inv if return_intermediates else None,
                          traj if return_intermediates else None, clock.seconds)

    # -- its phases ----------------------------------------------------------------------------

    @property
    def prediction_type(self) -> str:
        return self.unet.cfg.prediction_type

    @staticmethod
    def working_photo(photo: Image.Image, max_side: Optional[int]) -> Image.Image:
        """The photo resized (bicubic) to the working size the models see."""
        size = working_size(*photo.size, max_side)
        return photo.resize(size, Image.BICUBIC) if size != photo.size else photo

    @staticmethod
    def map(regions: Optional[Sequence[Region]], mapping: Optional[Mapping], photo_size: tuple[int, int],
            work_size: tuple[int, int], config: EditConfig) -> Mapping:
        """The latent (handle, target) pairs of the working size: from the regions or as given (exactly
        one of the two, as check_edit_inputs makes sure), subsampled to config.point_fraction."""
        if mapping is None:
            mapping = dense_mapping(regions, photo_size, latent_size_of(work_size))
        return subsample_pairs(mapping, config.point_fraction, config.seed) if config.point_fraction < 1 else mapping

    def _editable_cells(self, mask: Optional[np.ndarray], work_size: tuple[int, int]) -> Optional[Tensor]:
        """The editable mask (checked to be the photo's size by check_edit_inputs) at latent resolution."""
        if mask is None:
            return None
        return torch.from_numpy(editable_mask_to_latent(np.asarray(mask), latent_size_of(work_size))).to(self.device)

    def paste_source(self, inv: Inversion, handle: Tensor, target: Tensor, work: Image.Image,
                     regions: Optional[Sequence[Region]], photo_size: tuple[int, int], mapping: Mapping, grid: Grid,
                     config: EditConfig, generator: torch.Generator, progress: bool
                     ) -> tuple[PasteSource, Optional[Image.Image]]:
        """Encode then CP pastes the photo's own inversion latents from the handle cells and retraces its
        cycle-SDE noises. CP then Encode pastes, into each target cell, the same cell of the DDIM inversion
        of a pixel copy-paste (the preview), and noises the target's border with the handles: that border
        (the reference's simplified contour) lies inside the target, so the first paste overwrites it; it
        matters only through the length of the one noise draw, which fixes what each handle cell gets."""
        if config.sde:
            return PasteSource(inv.latents, inv.noises, handle, handle), None
        # the preview is made from the very pairs the latents move when they were subsampled
        preview = self.preview(work, regions if config.point_fraction == 1 else None, photo_size, mapping)
        preview_latent = self.encode(to_tensor(preview, self.device, self.dtype), generator)
        latents = invert(self._model(inv.context, inv.image_prompt), preview_latent, grid, self.alphas_cumprod,
                         sde=False, prediction_type=self.prediction_type, disable=not progress).latents
        noised = torch.cat([region_border(target, inv.latents[-1].shape[-2:]), handle])
        return PasteSource(latents, None, target, noised), preview

    @staticmethod
    def _paste_back(edited: Image.Image, photo: Image.Image, mask: Optional[np.ndarray]) -> Image.Image:
        """The decoded image at the photo's size, with the photo's pixels wherever the mask forbids change."""
        if edited.size != photo.size:
            edited = edited.resize(photo.size, Image.BICUBIC)
        if mask is None:
            return edited
        keep = np.asarray(mask) == 0
        return Image.fromarray(np.where(keep[..., None], np.asarray(photo), np.asarray(edited)))

    def invert(self, work: Image.Image, prompt: str, config: Optional[EditConfig] = None, progress: bool = True,
               clock: Optional[PhaseClock] = None, on_step: Optional[Callable[[int, int], None]] = None
               ) -> Inversion:
        """Encode the (working-size) photo and invert it, recording K/V; cached by the photo's content, the
        prompt and the settings an inversion depends on (config.inversion). on_step(i, n) follows the
        inversion's UNet calls (i of n done), e.g. to show its progress."""
        config = self.config if config is None else config
        key = (hashlib.sha1(work.tobytes()).hexdigest(), work.size, prompt, config.inversion)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        self._cache = None  # free the previous image's K/V before recording new ones
        clock = clock or PhaseClock(self.device)
        generator = torch.Generator(self.device).manual_seed(config.seed)
        with clock("conditioning_s"):
            context = self.text_encoder(prompt).to(self.device, self.dtype)
            if isinstance(context, Conditioning):  # SDXL: the size time ids are the working image's
                context = context.at_size(*work.size)
            image_prompt = None
            if config.ip_scale and self.image_prompter is not None:
                image_prompt = self.image_prompter(work, config.ip_scale)
        with clock("encode_s"):
            latent = self.encode(to_tensor(work, self.device, self.dtype), generator)
        store, grid = KVStore(self.unet.num_self_attention_layers), config.timestep_grid()

        def record(x: Tensor, t: int, i: int) -> Tensor:
            eps, kvs = self.unet.forward_recording_kv(x, self._timestep(t), context, image_prompt=image_prompt)
            store.record(i, kvs)
            if on_step is not None:
                on_step(i + 1, len(grid.inversion))
            return eps

        with clock("inversion_s"):
            traj = invert(record, latent, grid, self.alphas_cumprod, sde=config.sde, generator=generator,
                          prediction_type=self.prediction_type, disable=not progress)
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

    @classmethod
    def copy_paste(cls, image: ImageLike, regions: Optional[Sequence[Region]] = None, mask: Optional[np.ndarray] = None,
                   *, mapping: Optional[Mapping] = None, config: EditConfig = REFERENCE) -> Image.Image:
        """What pasting alone achieves, without a model: `preview` at the working size, back at the photo's
        size with the photo's pixels wherever `mask` forbids change, as `edit` returns its result (DragBench's
        `copy_paste` baseline)."""
        photo = load_image(image)
        work = cls.working_photo(photo, config.max_side)
        check_edit_inputs(regions, mapping, mask, photo.size, latent_size_of(work.size))
        mapping = cls.map(regions, mapping, photo.size, work.size, config)
        preview = cls.preview(work, regions if config.point_fraction == 1 else None, photo.size, mapping)
        return cls._paste_back(preview, photo, mask)

    def encode(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """A sample of the VAE posterior, scaled (the reference samples rather than takes the mean)."""
        mean, logvar = self._vae_finite("encode_moments", images)
        # in the standard layout: a channels-last VAE's latent (CPU bfloat16) would carry its layout into every
        # UNet call, which runs in the layout precision.py chose for it (measured alike at SD1.5 size here)
        return (self.vae.sample(mean, logvar, generator) * self.vae.scaling_factor).contiguous()

    def decode(self, latents: Tensor) -> Tensor:
        """The decoded images; checked for NaN/inf after the decode, so the denoising half waits for the device
        once, at its end."""
        images = self.vae.decode(latents / self.vae.scaling_factor)
        if torch.isfinite(images).all():  # the denoising half's one wait for the device
            return images
        if not torch.isfinite(latents).all():
            raise FloatingPointError(f"the denoised latent has NaN/inf values in {self.dtype}; "
                                     "run with dtype=torch.float32 (CLI: --dtype fp32) or bfloat16")
        return self._redo_in_fp32("decode", latents / self.vae.scaling_factor)

    def _vae_finite(self, half: str, x: Tensor):
        """Run a VAE half ("encode_moments" or "decode"); if fp16 overflows (the SD VAE can), redo it in fp32."""
        out = getattr(self.vae, half)(x)
        first = out[0] if isinstance(out, tuple) else out
        if self.dtype == torch.float32 or torch.isfinite(first).all():
            return out
        return self._redo_in_fp32(half, x)

    def _redo_in_fp32(self, half: str, x: Tensor):
        """A VAE half redone with an fp32 copy of the VAE (made once; the shared one is never converted mid-call),
        saying so."""
        warnings.warn(f"the VAE overflowed in {str(self.dtype).removeprefix('torch.')}; recomputed in float32", RuntimeWarning)
        if self._vae_fp32 is None:
            self._vae_fp32 = AutoencoderKL(self.vae.cfg).to(self.device)
            self._vae_fp32.load_state_dict({k: v.float() for k, v in self.vae.state_dict().items()})
        out = getattr(self._vae_fp32, half)(x.float())
        return tuple(o.to(self.dtype) for o in out) if isinstance(out, tuple) else out.to(self.dtype)
