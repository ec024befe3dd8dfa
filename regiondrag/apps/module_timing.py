"""`scripts/benchmark.py --modules`: each module of one edit timed per dtype and memory format, the
measurements behind regiondrag/precision.py's per-device choices.

    python scripts/benchmark.py --device cpu --size sd15 --modules --runs 3

UNet: one call at the working size's latent; VAE: encode of the working-size photo, decode of its
latent; last, on CPU, the bfloat16 UNet and VAE with oneDNN-packed convolution weights (models/onednn.py),
then also with their upsamplers folded (models/folding.py).
Random weights, inference mode, median of --runs calls after --warmup. On CPU also the UNet
with one thread fewer than torch's default (whether all cores help). The text and image encoders run
once per photo (a re-edit reuses them); the benchmark's phases show their time (conditioning_s).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Optional

import torch

from models.folding import fold_upsamplers
from models.onednn import pack_convolutions, packing_available
from models.random_weights import random_sd

from ..precision import dtype_name, emulated_dtype_error
from .benchmark import SIZES, timed


def time_modules(size: str, device: torch.device, runs: int, warmup: int, out: Optional[Path]) -> int:
    ucfg, vcfg, side = SIZES[size]
    candidates = [torch.float32, torch.bfloat16, torch.float16]
    dtypes = [d for d in candidates if not emulated_dtype_error(str(device), d)]
    rows = []
    print(f"modules of {size} at {side} px on {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"median of {runs} after {warmup} warm-up (seconds)")
    print(f"  {'module':12s} {'dtype':9s} {'format':17s} {'threads':>7s} {'s':>8s}")
    with torch.inference_mode():
        unet, vae, context = random_sd(ucfg, vcfg)
        unet, vae = unet.requires_grad_(False).to(device), vae.requires_grad_(False).to(device)
        photo = torch.rand(1, 3, side, side, device=device) * 2 - 1
        latent = torch.randn(1, 4, side // 8, side // 8, device=device)
        t = torch.tensor(549, device=device)
        def time_row(name: str, call, dtype: torch.dtype, layout: str, n: int) -> None:
            default = torch.get_num_threads()
            torch.set_num_threads(n)
            try:
                seconds = statistics.median(timed(call, device, runs, warmup)[0])
            finally:
                torch.set_num_threads(default)
            rows.append({"module": name, "dtype": dtype_name(dtype), "format": layout, "threads": n, "s": seconds})
            print(f"  {name:12s} {dtype_name(dtype):9s} {layout:17s} {n:7d} {seconds:8.3f}", flush=True)

        for dtype in dtypes:
            unet, vae = unet.to(dtype), vae.to(dtype)
            ctx = context.to(device=device, dtype=dtype)
            calls = {"unet": lambda: unet(latent.to(dtype), t, ctx),
                     "vae encode": lambda: vae.encode_moments(photo.to(dtype)),
                     "vae decode": lambda: vae.decode(latent.to(dtype))}
            for fmt in (torch.contiguous_format, torch.channels_last):
                unet, vae = unet.to(memory_format=fmt), vae.to(memory_format=fmt)
                threads = [torch.get_num_threads()]
                if device.type == "cpu" and fmt == torch.contiguous_format and threads[0] > 1:
                    threads.append(threads[0] - 1)
                for name, call in calls.items():
                    for n in threads if name == "unet" else threads[:1]:
                        time_row(name, call, dtype, str(fmt).removeprefix("torch."), n)
        if device.type == "cpu" and torch.bfloat16 in dtypes and packing_available():  # last: packing is in place
            for module in (unet, vae):
                pack_convolutions(module.to(torch.bfloat16, memory_format=torch.contiguous_format))
            ctx = context.to(device=device, dtype=torch.bfloat16)
            calls = {"unet": lambda: unet(latent.to(torch.bfloat16), t, ctx),
                     "vae encode": lambda: vae.encode_moments(photo.to(torch.bfloat16)),
                     "vae decode": lambda: vae.decode(latent.to(torch.bfloat16))}
            for name, call in calls.items():
                time_row(name, call, torch.bfloat16, "packed convs", torch.get_num_threads())
            for module in (unet, vae):  # and the upsamplers folded (models/folding.py), their 2x2 convolutions packed
                fold_upsamplers(module)
                pack_convolutions(module)
            for name in ("unet", "vae decode"):
                time_row(name, calls[name], torch.bfloat16, "packed, folded", torch.get_num_threads())
    if out is not None:
        out.write_text(json.dumps({"size": size, "device": str(device), "torch": torch.__version__, "rows": rows},
                                  indent=2))
        print(f"wrote {out}")
    return 0
