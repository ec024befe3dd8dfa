"""Time one RegionDrag edit, phase by phase, and optionally a diffusers-based baseline in the same run.

    python scripts/benchmark.py --device cpu --size tiny     # (scripts/benchmark.py runs this module's main)
    python scripts/benchmark.py --device cpu --size tiny
    python scripts/benchmark.py --device cuda --size sd15 --baseline diffusers --json bench.json
    python scripts/benchmark.py --device cuda --size sd15 --ip-adapter --compile
    python scripts/benchmark.py --device cuda --size sdxl --ip-adapter --compile     # 1024 px

Random weights unless --weights is given: speed does not depend on the weights' values.
The edit is examples/astronaut.png with examples/astronaut.json. A full edit clears the
inversion cache first; a re-edit reuses it (only the denoising half runs). The baseline is
the same pipeline with diffusers' UNet2DConditionModel and AutoencoderKL inside, K/V copied
with forward hooks on every attn1.to_k / to_v, as the reference implementation does.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import AutoencoderKL, UNet, UNetConfig, VAEConfig
from models.attention import ImagePrompt
from models.backbones import BACKBONES
from models.random_weights import random_sd
from models.unet import Conditioning
from sampling import START_T, STEPS
from weights.ip_adapter import IP_ADAPTER_REPO

from ..image_io import load_image, working_size
from ..mapping import latent_size_of
from ..pipeline import DTYPES, RegionDragPipeline, default_device_dtype, synchronize
from .region_file import regions_from_json

ROOT = Path(__file__).resolve().parents[2]
PHOTO, REGIONS = ROOT / "examples" / "astronaut.png", ROOT / "examples" / "astronaut.json"
# --size: (UNet, VAE, working size) of each backbone, and a tiny model for a quick look
SIZES = {"tiny": (UNetConfig.tiny(), VAEConfig.tiny(), 128),
         **{name: (b.unet, b.vae, b.working_size) for name, b in BACKBONES.items()}}


def timed(fn, device, runs: int, warmup: int = 1) -> tuple[list[float], object]:
    """Seconds of each of `runs` calls after `warmup` calls, and the last call's result."""
    for _ in range(warmup):
        fn()
    out, result = [], None
    for _ in range(runs):
        synchronize(device)
        t = time.perf_counter()
        result = fn()
        synchronize(device)
        out.append(time.perf_counter() - t)
    return out, result


def stats(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:9.1f} ms  (min {min(xs) * 1e3:.1f}, max {max(xs) * 1e3:.1f}, n={len(xs)})"


# -- the models ---------------------------------------------------------------------------------

def random_models(size: str, ip: bool, device, dtype):
    """Our UNet/VAE with random weights, a fixed random prompt embedding, optionally a random
    IP-Adapter-Plus (ViT-H image encoder + resampler) of the real shapes."""
    ucfg, vcfg, _ = SIZES[size]
    unet, vae, context = random_sd(ucfg, vcfg)
    context = context.to(device=device, dtype=dtype)
    prompter = None
    if ip:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from models.image_encoder import ImageEncoder, clip_image_processor
        from models.resampler import Resampler, ResamplerConfig
        from ..image_prompt import ImagePrompter

        if size in ("sd15", "sdxl"):  # CLIP ViT-H/14 as in h94/IP-Adapter models/image_encoder
            vision = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                      num_attention_heads=16, patch_size=14, image_size=224, projection_dim=1024)
            rcfg = ResamplerConfig.sdxl() if size == "sdxl" else ResamplerConfig.sd15()
        else:
            vision = CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=2, patch_size=14, image_size=28, projection_dim=16)
            rcfg = ResamplerConfig.tiny()
        encoder = ImageEncoder(CLIPVisionModelWithProjection(vision).eval(), clip_image_processor(vision.image_size))
        unet.add_image_prompt_projections()
        prompter = ImagePrompter(encoder, Resampler(rcfg)).to(device=device, dtype=dtype)
    unet, vae = unet.to(device=device, dtype=dtype).eval(), vae.to(device=device, dtype=dtype).eval()
    return unet, vae, (lambda prompt: context), prompter


class DiffusersUNet(nn.Module):
    """diffusers' UNet behind our UNet's call signature; K/V recorded and replayed by forward
    hooks on each self-attention's to_k / to_v, the reference implementation's mechanism."""

    def __init__(self, ours: UNet):
        super().__init__()
        from diffusers import UNet2DConditionModel
        from diffusers.utils import logging

        logging.set_verbosity_error()  # it warns about `.to(dtype)` on models built without from_pretrained

        c = ours.cfg
        self.inner = UNet2DConditionModel(
            block_out_channels=c.block_channels, layers_per_block=c.layers_per_block,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in c.attention_levels),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(c.attention_levels)),
            cross_attention_dim=c.context_dim, attention_head_dim=c.heads,
            use_linear_projection=c.linear_proj, norm_num_groups=c.norm_groups)
        p = next(ours.parameters())
        self.inner.load_state_dict(ours.state_dict(), strict=True)
        self.inner.to(device=p.device, dtype=p.dtype).eval()
        self.cfg, self.num_self_attention_layers = c, ours.num_self_attention_layers
        self._record: list = []
        self._replay: list = []
        paths = []
        for name, m in self.inner.named_modules():
            if name.endswith("attn1"):
                m.to_k.register_forward_hook(self._hook)
                m.to_v.register_forward_hook(self._hook)
                paths.append(name.split("."))
        # our layer names, read off diffusers' module paths: down_blocks.1.attentions.0.transformer_blocks.k.attn1
        # -> down.1.0 (mid_block...: mid.0), with .k where that transformer has more than one block
        deep = {tuple(p[:-3]) for p in paths if p[-2] != "0"}
        visiting = sorted(paths, key=lambda p: ("down_blocks", "mid_block", "up_blocks").index(p[0]))  # stable
        self._names = [".".join([p[0].split("_")[0], *p[1:-5], p[-4], *([p[-2]] if tuple(p[:-3]) in deep else [])])
                       for p in visiting]

    def _hook(self, module, inputs, output):
        if self._replay:
            given = self._replay.pop(0)
            return output if given is None else given
        self._record.append(output)
        return output

    def self_attention_layer_names(self) -> list[str]:
        return list(self._names)

    def forward(self, x, t, context, *, kv=None, image_prompt: ImagePrompt | None = None):
        self._record = []
        self._replay = [] if kv is None else [part for layer in kv for part in (layer or (None, None))]
        return self.inner(x, t, encoder_hidden_states=context).sample

    def forward_recording_kv(self, x, t, context, *, image_prompt: ImagePrompt | None = None):
        out, flat = self.forward(x, t, context), self._record
        return out, [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


class DiffusersVAE(nn.Module):
    def __init__(self, ours: AutoencoderKL):
        super().__init__()
        from diffusers import AutoencoderKL as DAutoencoderKL
        from diffusers.utils import logging

        logging.set_verbosity_error()

        c = ours.cfg
        n = len(c.block_channels)
        self.inner = DAutoencoderKL(block_out_channels=c.block_channels, layers_per_block=c.layers_per_block,
                                    down_block_types=("DownEncoderBlock2D",) * n,
                                    up_block_types=("UpDecoderBlock2D",) * n, latent_channels=c.latent_channels,
                                    norm_num_groups=c.norm_groups)
        p = next(ours.parameters())
        self.inner.load_state_dict(ours.state_dict(), strict=True)
        self.inner.to(device=p.device, dtype=p.dtype).eval()
        self.scaling_factor, self.sample = ours.scaling_factor, ours.sample

    def encode_moments(self, images):
        dist = self.inner.encode(images).latent_dist
        return dist.mean, dist.logvar

    def decode(self, latents):
        return self.inner.decode(latents).sample


# -- measuring ----------------------------------------------------------------------------------

def measure(name: str, pipe: RegionDragPipeline, args, photo, regions, max_side: int) -> dict:
    device = pipe.device
    kwargs = dict(max_side=max_side, progress=False, ip_scale=pipe.config.ip_scale if pipe.image_prompter else 0.0)

    def full():
        pipe.clear_cache()
        return pipe.edit(photo, regions, **kwargs)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    edit, last = timed(full, device, args.runs, warmup=args.warmup)
    phases = last.timings
    # the models are warm and the last full edit left its inversion cached: no warm-up needed
    reedit, _ = timed(lambda: pipe.edit(photo, regions, **kwargs), device, args.runs, warmup=0)

    w, h = latent_size_of(working_size(*photo.size, max_side))
    x = torch.randn(1, 4, h, w, device=device, dtype=pipe.dtype)
    ctx = pipe.text_encoder("").to(device, pipe.dtype)
    if isinstance(ctx, Conditioning):
        ctx = ctx.at_size(*working_size(*photo.size, max_side))
    t = torch.tensor(500, device=device)
    unet_call, _ = timed(lambda: pipe.unet(x, t, ctx), device, args.runs, warmup=args.warmup)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    print(f"\n[{name}]")
    print(f"  full edit      {stats(edit)}")
    print(f"  re-edit        {stats(reedit)}")
    print(f"  UNet call      {stats(unet_call)}")
    for k, v in phases.items():
        print(f"    {k:22s} {v * 1e3:9.1f} ms")
    kv_bytes = pipe.cached_inversion().kv.nbytes()
    print(f"  peak memory    {peak / 2**30:.2f} GiB ({'GPU allocated' if device.type == 'cuda' else 'process RSS'})")
    print(f"  cached K/V     {kv_bytes / 2**30:.3f} GiB (the re-edit cache's self-attention keys/values)")
    return {"edit_s": statistics.median(edit), "reedit_s": statistics.median(reedit),
            "unet_call_s": statistics.median(unet_call), "peak_mem_bytes": peak, "kv_cache_bytes": kv_bytes,
            "phases_s": phases, "edit_runs_s": edit}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=SIZES, default="tiny")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default: fp16 on cuda, fp32 on cpu")
    p.add_argument("--baseline", choices=["diffusers"], default=None)
    p.add_argument("--weights", default=None, help="real weights (diffusers folder, checkpoint or hub id)")
    p.add_argument("--ip-adapter", action="store_true", help="include IP-Adapter-Plus (random unless --weights)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the UNet and VAE (warm-up time is printed)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be at least 1 (the numbers are medians of the runs) and --warmup at least 0")
    if args.baseline and args.size == "sdxl":
        p.error("the diffusers baseline is built for SD1.x-shaped UNets (tiny, sd15); drop --baseline for sdxl")
    if args.baseline and args.ip_adapter:
        p.error("the diffusers baseline runs without the image prompt: drop --ip-adapter to compare")

    device = torch.device(args.device)
    _, dtype = default_device_dtype(args.device, DTYPES.get(args.dtype))
    max_side = SIZES[args.size][2]
    photo = load_image(PHOTO)
    regions = regions_from_json(REGIONS, photo.size)
    print(f"RegionDrag benchmark: {args.size}, {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, {dtype}, "
          f"{max_side}px, {STEPS} steps, start_t {START_T}, IP-Adapter {'on' if args.ip_adapter else 'off'}, torch {torch.__version__}")

    if args.weights:
        pipe = RegionDragPipeline.from_pretrained(args.weights, ip_adapter=IP_ADAPTER_REPO if args.ip_adapter else None,
                                                  device=str(device), dtype=dtype)
    else:
        unet, vae, text, prompter = random_models(args.size, args.ip_adapter, device, dtype)
        pipe = RegionDragPipeline(unet, vae, text, prompter)
    baseline = None
    if args.baseline:  # built before compiling ours, from the same weights
        baseline = RegionDragPipeline(DiffusersUNet(pipe.unet), DiffusersVAE(pipe.vae), pipe.text_encoder,
                                      pipe.image_prompter)
    if args.compile:
        clock = time.perf_counter()
        pipe.compile()
        pipe.edit(photo, regions, max_side=max_side, progress=False)
        synchronize(device)
        print(f"compile warm-up (first edit, compiling): {time.perf_counter() - clock:.1f} s")

    result = {"device": str(device), "size": args.size, "dtype": str(dtype), "compile": args.compile,
              "ip_adapter": args.ip_adapter, "torch": torch.__version__,
              "card": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    result.update(measure("ours", pipe, args, photo, regions, max_side))
    if baseline is not None:
        b = measure("baseline: diffusers UNet/VAE + hooks", baseline, args, photo, regions, max_side)
        # the baseline must be doing the same edit, or its time means nothing
        same = [np.asarray(q.edit(photo, regions, max_side=max_side, progress=False).image, np.int16)
                for q in (pipe, baseline)]
        result["baseline_max_pixel_diff"] = int(np.abs(same[0] - same[1]).max())
        print(f"\nbaseline vs ours, same edit: max pixel difference {result['baseline_max_pixel_diff']} / 255")
        result.update(baseline_edit_s=b["edit_s"], baseline_reedit_s=b["reedit_s"],
                      baseline_unet_call_s=b["unet_call_s"], baseline_peak_mem_bytes=b["peak_mem_bytes"],
                      ratio=b["edit_s"] / result["edit_s"], unet_call_ratio=b["unet_call_s"] / result["unet_call_s"])
        print(f"\nbaseline / ours: full edit {result['ratio']:.2f}x, UNet call {result['unet_call_ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
