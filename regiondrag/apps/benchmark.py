"""Time one RegionDrag edit, phase by phase, beside a diffusers-based baseline in the same run.

    python scripts/benchmark.py --device cpu --size tiny     # (scripts/benchmark.py runs this module's main)
    python scripts/benchmark.py --device cpu --size sd15 --baseline diffusers --json bench.json
    python scripts/benchmark.py --device cuda --size sd15 --ip-adapter --baseline diffusers --compile --cuda-graphs
    python scripts/benchmark.py --device cuda --size sdxl --ip-adapter --compile     # 1024 px
    python scripts/benchmark.py --device cpu --size sd15 --modules    # each module per dtype and memory format

Random weights unless --weights is given: speed does not depend on the weights' values.
The edit is examples/astronaut.png with examples/astronaut.json. A full edit clears the
inversion cache first; a re-edit reuses it (only the denoising half runs); a UNet call is one
denoising call (replaying K/V). Every timed call runs under torch.inference_mode() with frozen
models. Without --dtype, ours runs in the device's default dtype (regiondrag/precision.py) and,
where that is not float32, in float32 too; the baseline (the same weights through diffusers'
UNet2DConditionModel and AutoencoderKL, K/V copied with forward hooks as the reference does,
IP-Adapter-Plus through diffusers' own processors) runs in each of those dtypes, and must
produce ours' image. Peak memory is each configuration's alone: its models are built after the
previous one's are freed, and the peak is reset (CPU: the process's resident-set high-water
mark; GPU: torch's allocated and reserved). With --compile, the first edit's compile time (cold
cache) and a second process's (the same cache, warm) are reported.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.backbones import BACKBONES
from models.random_weights import random_sd
from models.unet import UNetConfig
from models.vae import VAEConfig
from sampling import START_T, STEPS
from weights.ip_adapter import IP_ADAPTER_REPO

from ..attention_swap import AttentionSwap
from ..image_io import load_image, working_size
from ..mapping import latent_size_of
from ..pipeline import CUDA_GRAPH_MODES, DTYPES, RegionDragPipeline, synchronize
from ..precision import default_dtype, dtype_name
from .region_file import regions_from_json

ROOT = Path(__file__).resolve().parents[2]
PHOTO, REGIONS = ROOT / "examples" / "astronaut.png", ROOT / "examples" / "astronaut.json"
# --size: (UNet, VAE, working size) of each backbone, and a tiny model for a quick look
SIZES = {"tiny": (UNetConfig.tiny(), VAEConfig.tiny(), 128),
         **{name: (b.unet, b.vae, b.working_size) for name, b in BACKBONES.items()}}


def timed(fn, device, runs: int, warmup: int = 1) -> tuple[list[float], list[float], object]:
    """Wall-clock and process CPU seconds of each of `runs` calls after `warmup` calls, and the last call's
    result. (CPU seconds count this process's threads alone: on a shared CPU they move less with others' load.)"""
    for _ in range(warmup):
        fn()
    wall, cpu, result = [], [], None
    for _ in range(runs):
        synchronize(device)
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        synchronize(device)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu, result


def stats(xs: list[float], cpu: list[float]) -> str:
    return (f"{statistics.median(xs) * 1e3:9.1f} ms  (min {min(xs) * 1e3:.1f}, max {max(xs) * 1e3:.1f}, n={len(xs)}; "
            f"CPU {statistics.median(cpu) * 1e3:.1f} ms)")


# -- peak memory ---------------------------------------------------------------------------------

def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: torch's counters on GPU; on Linux the process's resident high-water mark (VmHWM)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size to the current one
    except OSError:
        pass  # not Linux: peak_memory says the peak counts from the process's start


def peak_memory(device: torch.device) -> dict:
    """The peak since reset_peak_memory, in bytes, with what was counted."""
    if device.type == "cuda":
        return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(device), "counted": "GPU, torch's allocator"}
    try:
        status = Path("/proc/self/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        return {"peak_rss_bytes": kib * 1024, "counted": "process RSS (VmHWM, reset before this configuration)"}
    except (OSError, StopIteration):
        return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "counted": "process RSS since its start (ru_maxrss)"}


def describe_peak(peak: dict) -> str:
    if "peak_allocated_bytes" in peak:
        return (f"{peak['peak_allocated_bytes'] / 2**30:.2f} GiB allocated, "
                f"{peak['peak_reserved_bytes'] / 2**30:.2f} GiB reserved ({peak['counted']})")
    return f"{peak['peak_rss_bytes'] / 2**30:.2f} GiB ({peak['counted']})"


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


def ours(args, device: torch.device, dtype: torch.dtype) -> RegionDragPipeline:
    """Our pipeline, frozen (no parameter asks for gradients)."""
    if args.weights:
        pipe = RegionDragPipeline.from_pretrained(args.weights, ip_adapter=IP_ADAPTER_REPO if args.ip_adapter else None,
                                                  device=str(device), dtype=dtype)
    else:
        pipe = RegionDragPipeline(*random_models(args.size, args.ip_adapter, device, dtype))
    for module in (pipe.unet, pipe.vae, pipe.image_prompter):
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    return pipe


def diffusers_baseline(pipe: RegionDragPipeline) -> RegionDragPipeline:
    """The same weights run through diffusers (apps/baseline.py), built from ours."""
    from .baseline import DiffusersUNet, DiffusersVAE, ReferenceImagePrompter

    prompter = pipe.image_prompter
    unet = DiffusersUNet(pipe.unet, prompter.resampler if prompter is not None else None)
    return RegionDragPipeline(unet, DiffusersVAE(pipe.vae), pipe.text_encoder,
                              ReferenceImagePrompter(prompter.encoder) if prompter is not None else None)


# -- measuring ----------------------------------------------------------------------------------

def measure(name: str, pipe: RegionDragPipeline, args, photo, regions, max_side: int) -> dict:
    """Full edit, re-edit and one denoising UNet call (medians), the phases of the last full edit, and its image."""
    device = pipe.device
    kwargs = dict(max_side=max_side, progress=False, ip_scale=pipe.config.ip_scale if pipe.image_prompter else 0.0)

    def full():
        pipe.clear_cache()
        return pipe.edit(photo, regions, **kwargs)

    edit, edit_cpu, last = timed(full, device, args.runs, warmup=args.warmup)
    image, phases = np.asarray(last.image), last.timings
    # the models are warm and the last full edit left its inversion cached: no warm-up needed
    reedit, reedit_cpu, _ = timed(lambda: pipe.edit(photo, regions, **kwargs), device, args.runs, warmup=0)

    inv = pipe.cached_inversion()
    w, h = latent_size_of(working_size(*photo.size, max_side))
    x = torch.randn(1, 4, h, w, device=device, dtype=pipe.dtype)
    kv, t = inv.kv.replay(0, AttentionSwap()), torch.tensor(549, device=device)

    def unet_call():  # its output dropped at once: a CUDA graph's next replay overwrites it
        pipe.unet(x, t, inv.context, kv=kv, image_prompt=inv.image_prompt)

    unet_call, unet_call_cpu, _ = timed(unet_call, device, args.runs, warmup=args.warmup)
    peak = peak_memory(device)

    print(f"\n[{name}]")
    print(f"  full edit      {stats(edit, edit_cpu)}")
    print(f"  re-edit        {stats(reedit, reedit_cpu)}")
    print(f"  UNet call      {stats(unet_call, unet_call_cpu)}")
    for k, v in phases.items():
        print(f"    {k:22s} {v * 1e3:9.1f} ms")
    kv_bytes = inv.kv.nbytes()
    print(f"  peak memory    {describe_peak(peak)}")
    print(f"  cached K/V     {kv_bytes / 2**30:.3f} GiB (the re-edit cache's self-attention keys/values)")
    return {"name": name, "dtype": dtype_name(pipe.dtype), "edit_s": statistics.median(edit),
            "reedit_s": statistics.median(reedit), "unet_call_s": statistics.median(unet_call),
            "edit_cpu_s": statistics.median(edit_cpu), "reedit_cpu_s": statistics.median(reedit_cpu),
            "unet_call_cpu_s": statistics.median(unet_call_cpu), **peak,
            "kv_cache_bytes": kv_bytes, "phases_s": phases, "edit_runs_s": edit, "reedit_runs_s": reedit,
            "image": image}


def profile_reedit(pipe: RegionDragPipeline, photo, regions, max_side: int, top: int = 15) -> dict:
    """One re-edit under torch.profiler: the busiest kernels (GPU) or operators (CPU), and how much of the
    wall time the device was busy (the rest: host gaps between launches)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = pipe.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    kwargs = dict(max_side=max_side, progress=False, ip_scale=pipe.config.ip_scale if pipe.image_prompter else 0.0)
    pipe.edit(photo, regions, **kwargs)  # the inversion cached
    synchronize(pipe.device)
    with profile(activities=activities) as prof:
        clock = time.perf_counter()
        pipe.edit(photo, regions, **kwargs)
        synchronize(pipe.device)
        wall = time.perf_counter() - clock
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)
    busy = sum(getattr(e, attr) for e in events if not cuda or e.device_type == torch.autograd.DeviceType.CUDA)
    rows = [{"name": e.key[:80], "ms": getattr(e, attr) / 1e3, "calls": e.count} for e in events[:top]]
    print(f"\n[profile of one re-edit: {wall * 1e3:.1f} ms wall, "
          f"{'device busy' if cuda else 'operators'} {busy / 1e3:.1f} ms]")
    for r in rows:
        print(f"  {r['ms']:9.2f} ms  {r['calls']:5d}x  {r['name']}")
    return {"wall_ms": wall * 1e3, "busy_ms": busy / 1e3, "top": rows}


def compile_first_edit(pipe: RegionDragPipeline, args, photo, regions, max_side: int) -> float:
    """Seconds of compiling and running the first edit."""
    clock = time.perf_counter()
    pipe.compile(mode=args.compile_mode, backend=args.compile_backend, cuda_graphs=args.cuda_graphs)
    pipe.edit(photo, regions, max_side=max_side, progress=False)
    synchronize(pipe.device)
    return time.perf_counter() - clock


def warm_start(argv: list[str], cache: Path) -> float:
    """A second process's compile-and-first-edit seconds, with the compile cache the first one filled."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "regiondrag.apps.benchmark", *argv, "--compile-cache", str(cache),
                           "--compile-start-only"], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"the warm-start process failed: {proc.stderr.strip().splitlines()[-1:]}")
    return round(json.loads(proc.stdout.strip().splitlines()[-1])["compile_first_edit_s"], 2)


def diagnostic(fn, *args):
    """fn(*args), or its error in a line: a profile or a warm start that fails must not lose the timings."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 (reported, not hidden)
        print(f"  {fn.__name__} failed: {type(e).__name__}: {e}")
        return {"error": f"{type(e).__name__}: {e}"}


def ratio(a: dict, b: dict) -> dict:
    """How many times faster b is than a, per measure (wall clock, and process CPU time)."""
    return {k: a[k] / b[k] for k in ("edit_s", "reedit_s", "unet_call_s",
                                     "edit_cpu_s", "reedit_cpu_s", "unet_call_cpu_s")}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=SIZES, default="tiny")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="only this dtype (default: the device's default dtype, and float32 where that is not it)")
    p.add_argument("--baseline", choices=["diffusers"], default=None)
    p.add_argument("--weights", default=None, help="real weights (diffusers folder, checkpoint or hub id)")
    p.add_argument("--ip-adapter", action="store_true", help="include IP-Adapter-Plus (random unless --weights)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the UNet and VAE (compile times are printed)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="with --compile: the denoising half as CUDA graphs (RegionDragPipeline.compile)")
    p.add_argument("--compile-mode", choices=CUDA_GRAPH_MODES, default="max-autotune-no-cudagraphs")
    p.add_argument("--compile-backend", default="inductor", help="(aot_eager: trace without code generation)")
    p.add_argument("--compile-cache", type=Path, default=None,
                   help="inductor's cache folder (default: a new empty one, so the first compile is cold)")
    p.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=True,
                   help="with --compile: time a second process's compile with the cache the first one filled")
    p.add_argument("--profile", action="store_true", help="profile one re-edit of ours: top kernels, device busy time")
    p.add_argument("--modules", action="store_true",
                   help="instead: time each module (UNet call, VAE encode, decode) per dtype and memory format")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--compile-start-only", action="store_true", help=argparse.SUPPRESS)  # warm_start's child
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be at least 1 (the numbers are medians of the runs) and --warmup at least 0")
    if args.baseline and args.size == "sdxl":
        p.error("the diffusers baseline is built for SD1.x-shaped UNets (tiny, sd15); drop --baseline for sdxl")
    if args.cuda_graphs and not args.compile:
        p.error("--cuda-graphs needs --compile (the CUDA graphs are torch.compile's)")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.modules:
        from .module_timing import time_modules

        return time_modules(args.size, device, args.runs, args.warmup, args.json)
    default, why = default_dtype(args.device)
    dtypes = [DTYPES[args.dtype]] if args.dtype else [default] + ([torch.float32] if default != torch.float32 else [])
    max_side = SIZES[args.size][2]
    photo = load_image(PHOTO)
    regions = regions_from_json(REGIONS, photo.size)
    cache = args.compile_cache or (Path(tempfile.mkdtemp(prefix="regiondrag-compile-")) if args.compile else None)
    if args.compile:  # before anything compiles: the first compile is cold, the warm start reads what it wrote
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)

    with torch.inference_mode():
        if args.compile_start_only:
            pipe = ours(args, device, dtypes[0])
            print(json.dumps({"compile_first_edit_s": compile_first_edit(pipe, args, photo, regions, max_side)}))
            return 0
        card = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        print(f"RegionDrag benchmark: {args.size}, {device}{f' ({card})' if card else ''}, "
              f"{' and '.join(map(dtype_name, dtypes))} (default {dtype_name(default)}: {why}), {max_side}px, "
              f"{STEPS} steps, start_t {START_T}, IP-Adapter {'on' if args.ip_adapter else 'off'}, "
              f"compile {'on' + (' + CUDA graphs' if args.cuda_graphs else '') if args.compile else 'off'}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        result = {"device": str(device), "card": card, "size": args.size, "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "default_dtype": dtype_name(default), "default_dtype_why": why,
                  "ip_adapter": args.ip_adapter, "compile": args.compile, "cuda_graphs": args.cuda_graphs,
                  "compile_mode": args.compile_mode if args.compile else None, "runs": [], "ratios": {}}
        for dtype in dtypes:
            pipe = ours(args, device, dtype)
            first = compile_first_edit(pipe, args, photo, regions, max_side) if args.compile else None
            if first is not None:
                cold = "cold cache" if dtype == dtypes[0] else "compiled again"
                print(f"compile + first edit ({cold}): {first:.1f} s")
            reset_peak_memory(device)  # the edits' peak: not the weights' construction in float32, nor compiling
            run = dict(measure(f"ours, {dtype_name(dtype)}", pipe, args, photo, regions, max_side),
                       compile_first_edit_s=first)
            if args.profile and dtype == dtypes[0]:
                result["profile"] = diagnostic(profile_reedit, pipe, photo, regions, max_side)
            result["runs"].append(run)
            if args.baseline:  # built from ours, then ours freed: the baseline's peak is its own
                baseline = diffusers_baseline(pipe)
                del pipe
                reset_peak_memory(device)
                base = measure(f"diffusers, {dtype_name(dtype)}", baseline, args, photo, regions, max_side)
                # the baseline must be doing the same edit, or its time means nothing
                base["max_pixel_diff_vs_ours"] = int(np.abs(base["image"].astype(np.int16) - run["image"]).max())
                print(f"  same edit as ours: max pixel difference {base['max_pixel_diff_vs_ours']} / 255")
                result["runs"].append(base)
                del baseline
            else:
                del pipe
        if args.compile and args.warm_start:
            result["compile_warm_start_s"] = warm = diagnostic(warm_start, argv, cache)
            print(f"compile + first edit in a second process (warm cache): {warm} s")

    if cache is not None and args.compile_cache is None:
        shutil.rmtree(cache, ignore_errors=True)  # the new folder made for this run
    print("\nspeed-up (times faster; full edit, re-edit, UNet call; wall clock, and in CPU time):")
    for r in result["runs"]:
        if r["name"].startswith("diffusers"):
            for o in (o for o in result["runs"] if o["name"].startswith("ours")):
                key = f"{r['name']} / {o['name']}"
                result["ratios"][key] = q = ratio(r, o)
                print(f"  {key:36s} {q['edit_s']:.2f}x  {q['reedit_s']:.2f}x  {q['unet_call_s']:.2f}x;  "
                      f"CPU {q['edit_cpu_s']:.2f}x  {q['reedit_cpu_s']:.2f}x  {q['unet_call_cpu_s']:.2f}x")
    for r in result["runs"]:
        r.pop("image")  # compared above; not JSON
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
