"""Which number format a device computes fast: the default dtype, why, and the per-module layout.

    dtype, why = default_dtype("cpu")       # bfloat16 where the CPU computes it natively, else float32
    emulated_dtype_error("cpu", torch.float16)   # a one-line refusal on a CPU without float16 arithmetic

On a GPU the default is float16 (the reference's). On a CPU, bfloat16 where the processor has bfloat16
arithmetic (x86: AVX512-BF16 or AMX; Arm: BF16), float32 elsewhere: elsewhere torch emulates bfloat16
and is slower than in float32. float16 on a CPU without half-precision arithmetic (x86: AVX512-FP16 or
AMX-FP16; Arm: FP16 vectors) is emulated: one SD1.5 UNet call took over 4 minutes instead of 6 s.

Per-module choices on CPU, by measurement (this project's CI machine, AMD EPYC, 2 cores, AVX512-BF16,
torch 2.13, SD1.5 at 512 px, random weights, inference mode; `python scripts/benchmark.py --modules`
measures them again; the machine is shared, so single runs move by about 10%):
    UNet call: float32 4.46 s, bfloat16 2.56 s packed (the README's benchmark run, a quiet machine); issue 22's:
        float32 5.97 s, bfloat16 3.17 s, channels-last slower in both (7.01 s, 3.46 s), torch.compile
        (inductor) in bfloat16 11.65 s after a 132 s compile: eager and contiguous it stays. In bfloat16 its
        convolutions' weights are packed for oneDNN once (models/onednn.py): 3.01 -> 2.65 s per call (same
        process, a quiet machine); float32 is not packed, so float32 edits stay bit-identical.
    VAE encode / decode: see VAE_CHANNELS_LAST. In bfloat16 the decoder's upsamplers are folded into 2x2
        convolutions of the small image (models/folding.py): decode 6.70 -> 5.83 s (same process, median of 3).
        Not the UNet's: 2.58 -> 2.53 s per call, but their folded taps, rounded to bfloat16 once more, fed back
        through 20 steps, put the tiny model's bfloat16 edit further from float32 than diffusers' bfloat16 edit
        (one thread: mean pixel error 1.78 instead of 1.46, diffusers' 1.86; max 32 instead of 20, diffusers' 22).
    Text and image encoders run once per photo (cached for re-edits): the module's dtype, no layout change.
    Threads: torch's default, one per core (the UNet is all the time and uses every core).
"""
from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from models.onednn import packing_available

# CPU feature flags (Linux /proc/cpuinfo: x86 "flags", Arm "Features") that give a dtype native arithmetic
NATIVE_FLAGS = {torch.bfloat16: ("avx512_bf16", "amx_bf16", "bf16"),
                torch.float16: ("avx512_fp16", "amx_fp16", "fphp", "asimdhp")}
# The VAE in channels-last memory format, per CPU dtype: faster in bfloat16 (measured at 512 px, one run each on
# the shared 2-core machine: encode 4.11 -> 3.16 s, decode 8.54 -> 6.87 s); in float32 (encode 11.8 -> 6.5 s,
# decode 17.3 -> 16.0 s) it would change the result's last bits, and float32 edits stay bit-identical
VAE_CHANNELS_LAST = {torch.bfloat16: True}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags, from /proc/cpuinfo (empty where there is none: then nothing counts as native)."""
    try:
        return parse_cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of /proc/cpuinfo's text: x86 lists them as "flags", Arm as "Features"."""
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def native_flag(dtype: torch.dtype, flags: Optional[frozenset[str]] = None) -> Optional[str]:
    """The CPU flag that gives `dtype` native arithmetic here (None: emulated, or float32 which always is native)."""
    flags = cpu_flags() if flags is None else flags
    return next((f for f in NATIVE_FLAGS.get(dtype, ()) if f in flags), None)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def default_dtype(device: str, flags: Optional[frozenset[str]] = None) -> tuple[torch.dtype, str]:
    """The dtype a pipeline on `device` runs in when none is asked for, and why, in a few words."""
    if torch.device(device).type != "cpu":
        return torch.float16, "float16 on GPU, as the reference runs"
    flag = native_flag(torch.bfloat16, flags)
    if flag is not None:
        return torch.bfloat16, f"this CPU computes bfloat16 natively ({flag}); --dtype fp32 for float32"
    return torch.float32, (f"this CPU ({platform.machine() or 'unknown'}) has no native bfloat16 arithmetic "
                           "(AVX512-BF16, AMX or Arm BF16), so float32 is fastest")


def precision_note(device, dtype: torch.dtype) -> str:
    """"bfloat16 (why)": a pipeline's dtype as the CLI prints it and the browser editor shows it."""
    default, why = default_dtype(str(device))
    return f"{dtype_name(dtype)} ({why if dtype == default else 'as asked'})"


def emulated_dtype_error(device: str, dtype: torch.dtype, flags: Optional[frozenset[str]] = None) -> Optional[str]:
    """A one-line refusal of a half-precision dtype this CPU can only emulate (None: fine)."""
    if torch.device(device).type != "cpu" or dtype not in NATIVE_FLAGS or native_flag(dtype, flags):
        return None
    native = ("bf16 (native here) or fp32" if native_flag(torch.bfloat16, flags) else "fp32")
    wanted = " or ".join(f.upper().replace("_", "-") for f in NATIVE_FLAGS[dtype][:2])
    return (f"{dtype_name(dtype)} on this CPU is emulated (it has no {wanted} arithmetic): an SD1.5 UNet call takes "
            f"minutes instead of seconds; use {native}")


def unet_packed_convolutions(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the UNet's convolution weights are packed for oneDNN on this device and dtype (measured above)."""
    return device.type == "cpu" and dtype == torch.bfloat16 and packing_available()


def vae_channels_last(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the VAE runs in channels-last memory format on this device and dtype (CPU measurements above)."""
    return device.type == "cpu" and VAE_CHANNELS_LAST.get(dtype, False)


def vae_folded_upsamplers(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the VAE decoder's upsamplers run folded on this device and dtype (measured above)."""
    return device.type == "cpu" and dtype == torch.bfloat16
