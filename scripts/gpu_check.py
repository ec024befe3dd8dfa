"""The GPU check (issue 21): one call on a lent GPU machine fills the README's Speed table.

    python scripts/gpu_check.py --fetch-wheels       # here, where PyPI answers: what the GPU machine lacks
    python scripts/gpu_check.py OUT_DIR              # there, in one call of under 8 minutes (carry gpu_wheels/)
    python scripts/gpu_check.py OUT_DIR --dry-run    # the same sequence on this CPU with the tiny model

In order: install the carried wheels of what is missing (diffusers and its two small needs, into a
folder of its own), run the GPU tests (tests/test_fast_path.py on cuda: the CUDA-graph re-edit path
compiled once, no host sync in its loop, compiled fp16 as close to fp32 as diffusers' fp16 is), then
the benchmark of SD1.5 at 512 px in fp16: eager, compiled + CUDA graphs, compiled, each with and
without IP-Adapter-Plus, each beside the diffusers baseline in its process. The steps run as child
processes under one deadline (--budget-s); a step that no longer fits is skipped and says so. OUT_DIR
gets gpu_check.json (every number), summary.md (the table, also printed) and log.txt (every step's
output). The dry run takes the identical steps on the CPU with the tiny model in float32, with
aot_eager for inductor (no CUDA graphs exist there), so the script cannot rot before a GPU comes.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "gpu_wheels"  # git-ignored; the device call carries it
# Missing on the GPU machine's image (its package list: torch, transformers, safetensors, opencv, numpy,
# pytest, pillow, ... but no diffusers); diffusers needs the other two. Pure-Python wheels.
NEEDED = {"diffusers": "diffusers", "importlib_metadata": "importlib_metadata", "lazy_importer": "lazy-importer"}
GOALS = {"edit_s": 0.15, "reedit_s": 0.07}                        # issue 21, fp16 SD1.5 + IP-Adapter-Plus
PEAK_GOAL_GIB = {True: 4.0, False: 3.0}                           # with / without the image prompt
# name, benchmark flags; in order of value, so a short budget keeps the acceptance runs
CONFIGS = [
    ("eager + IP", ["--ip-adapter"]),
    ("compiled + CUDA graphs + IP", ["--ip-adapter", "--compile", "--cuda-graphs", "--profile"]),
    ("eager", []),
    ("compiled + CUDA graphs", ["--compile", "--cuda-graphs"]),
    ("compiled + IP", ["--ip-adapter", "--compile", "--no-warm-start"]),
    ("compiled", ["--compile", "--no-warm-start"]),
]


def fetch_wheels() -> int:
    """Download the wheels (the diffusers version installed here, which the tests pass with) into WHEELS."""
    from importlib.metadata import version

    WHEELS.mkdir(exist_ok=True)
    pins = [f"{dist}=={version(dist)}" if dist == "diffusers" else dist for dist in NEEDED.values()]
    return subprocess.call([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                            "-d", str(WHEELS), *pins])


def install_missing(log) -> dict:
    """Install the carried wheels of missing modules into a folder of their own, put on every child's path."""
    missing = [module for module in NEEDED if importlib.util.find_spec(module) is None]
    if not missing:
        return {"installed": [], "note": "nothing missing"}
    wheels = sorted(str(w) for w in WHEELS.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"missing {', '.join(missing)} and no wheels in {WHEELS}: run "
                         f"`python scripts/gpu_check.py --fetch-wheels` where PyPI answers, and carry gpu_wheels")
    site = Path("/tmp/regiondrag-gpu-site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--no-cache-dir", "--upgrade", "--target", str(site), *wheels],
                          capture_output=True, text=True)
    log.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"installing {', '.join(missing)} from {WHEELS} failed: {proc.stderr.strip()[-300:]}")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {"installed": missing, "into": str(site)}


def step(name: str, argv: list[str], log, deadline: float, cap_s: float, env: dict | None = None) -> dict:
    """Run a child process within min(cap_s, what is left); its output goes to the log."""
    left = deadline - time.monotonic()
    if left < min(cap_s, 30):
        print(f"[{name}] skipped: {left:.0f} s left", flush=True)
        return {"status": "skipped", "why": f"{left:.0f} s of the budget left"}
    print(f"[{name}] ...", flush=True)
    clock = time.monotonic()
    log.write(f"\n===== {name}: {' '.join(argv)}\n")
    log.flush()
    try:
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=min(cap_s, left),
                              env=dict(os.environ, **(env or {})))
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {min(cap_s, left):.0f} s"
    seconds = time.monotonic() - clock
    print(f"[{name}] {status} in {seconds:.0f} s", flush=True)
    return {"status": status, "seconds": seconds}


def summary(results: dict) -> str:
    """The Speed table: ours beside the in-run baseline, ratios, memory, compile times; goals met or missed."""
    lines = ["| config | full edit | re-edit | UNet call | baseline full edit / re-edit | ratio (edit, re-edit) | "
             "same image | peak GPU memory (allocated / reserved) | compile cold / warm start | goals |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, flags in CONFIGS:
        r = results["benchmarks"].get(name, {})
        if "runs" not in r:
            lines.append(f"| {name} | {r.get('status', 'not run')} | | | | | | | | |")
            continue
        ours, base = r["runs"][0], next((x for x in r["runs"] if x["name"].startswith("diffusers")), None)
        ratio = next(iter(r["ratios"].values()), None)
        gib = ours.get("peak_allocated_bytes", ours.get("peak_rss_bytes", 0)) / 2**30
        reserved = ours.get("peak_reserved_bytes", 0) / 2**30
        goals = []
        if r["device"].startswith("cuda"):
            goals = [f"{k.removesuffix('_s')} {'met' if ours[k] <= v else 'missed'} (<= {v} s)"
                     for k, v in GOALS.items() if "--ip-adapter" in flags]
            limit = PEAK_GOAL_GIB["--ip-adapter" in flags]
            goals.append(f"memory {'met' if gib <= limit else 'missed'} (<= {limit} GB)")
        warm = r.get("compile_warm_start_s")
        warm = warm if isinstance(warm, (int, float)) else None  # (a failed warm start is in the JSON)
        lines.append(
            f"| {name} | {ours['edit_s']:.3f} s | {ours['reedit_s']:.3f} s | {ours['unet_call_s'] * 1e3:.1f} ms | "
            + (f"{base['edit_s']:.3f} s / {base['reedit_s']:.3f} s | "
               f"{ratio['edit_s']:.2f}x, {ratio['reedit_s']:.2f}x | max diff {base['max_pixel_diff_vs_ours']} | "
               if base else "| | | ")
            + f"{gib:.2f} / {reserved:.2f} GiB | "
            + (f"{ours['compile_first_edit_s']:.0f} s / {warm:.0f} s | " if warm is not None else
               f"{ours['compile_first_edit_s']:.0f} s / - | " if ours.get("compile_first_edit_s") else "- | ")
            + f"{'; '.join(goals)} |")
    env = results["environment"]
    head = (f"GPU check: {env['device']}, torch {env['torch']}, Python {env['python']}; SD1.5 {env['size']} random "
            f"weights, {env['dtype']}, 20 steps, start_t 0.5; medians of {env['runs']} warm runs; "
            "ratio = baseline / ours")
    return head + "\n\n" + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, nargs="?", help="folder for gpu_check.json, summary.md, log.txt")
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with the tiny model")
    p.add_argument("--budget-s", type=float, default=None, help="deadline for all steps (default: 450; dry run 300)")
    p.add_argument("--fetch-wheels", action="store_true", help=f"download the missing packages' wheels into {WHEELS}")
    args = p.parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels()
    if args.out is None:
        p.error("give OUT_DIR (or --fetch-wheels)")
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device here: run with --dry-run for the CPU rehearsal")
    budget = args.budget_s or (300 if args.dry_run else 450)
    deadline = time.monotonic() + budget
    # caps per step on the GPU (the tests, one benchmark); the rehearsal's steps have the whole budget, as a
    # shared CPU's load can stretch a 20 s step tenfold
    test_cap, bench_cap = (budget, budget) if args.dry_run else (150, 240)
    if args.dry_run:  # the tiny model needs no second thread, and a busy CPU makes threads wait on each other
        os.environ["OMP_NUM_THREADS"] = "1"
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    bench = ["--device", device, "--baseline", "diffusers"] + (
        ["--size", "tiny", "--dtype", "fp32", "--runs", "1", "--warmup", "0", "--compile-backend", "eager"]
        if args.dry_run else ["--size", "sd15", "--dtype", "fp16", "--runs", "5", "--warmup", "2",
                              "--compile-mode", "default"])
    env = {"device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or 'x86_64'})",
           "torch": torch.__version__, "python": platform.python_version(),
           "size": "tiny" if args.dry_run else "512 px",
           "dtype": "float32" if args.dry_run else "float16", "runs": 1 if args.dry_run else 5}
    results = {"environment": env, "dry_run": args.dry_run, "benchmarks": {}}
    with open(args.out / "log.txt", "w") as log:
        results["install"] = install_missing(log)
        results["tests"] = step("GPU tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                              "tests/test_fast_path.py"], log, deadline, test_cap,
                                env={"REGIONDRAG_TEST_DEVICE": device})
        for i, (name, flags) in enumerate(CONFIGS):
            out = args.out / f"bench{i}.json"
            r = step(name, [sys.executable, "scripts/benchmark.py", *bench, *flags, "--json", str(out)], log,
                     deadline, bench_cap)
            if out.exists():
                r.update(json.loads(out.read_text()))
                out.unlink()  # merged into gpu_check.json: the device call brings back at most 8 files
            results["benchmarks"][name] = r
    table = summary(results)
    (args.out / "summary.md").write_text(table)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    print("\n" + table)
    failed = [k for k, r in [("GPU tests", results["tests"]), *results["benchmarks"].items()] if r["status"] != "ok"]
    print(f"wrote {args.out}/gpu_check.json, summary.md, log.txt"
          + (f"; not ok: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
