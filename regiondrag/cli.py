"""Command line: `python -m regiondrag edit|preview ...` (see --help of each)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .benchmark_data import DatasetError, region_mapping
from .copy_paste import PASTE_SCHEDULES
from .dragbench import read_meta_data
from .image_io import MAX_SIDE, ImageError, image_format, load_image, save_image_atomic, working_size
from .mapping import dense_mapping, latent_size_of
from .preview import draw_preview
from .regions import RegionError, regions_from_json

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class UsageError(ValueError):
    """A command line that cannot be run as given."""


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, type=Path, help="the photo to edit (PNG, JPEG, ...)")
    p.add_argument("--regions", required=True, type=Path,
                   help="region file: our JSON format (see README), or a DragBench meta_data_region.pkl")
    p.add_argument("--out", required=True, type=Path, help="where to write the result (PNG or JPEG)")
    p.add_argument("--max-side", type=int, default=MAX_SIDE, help="long side the model works at (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    from . import pipeline as P

    parser = argparse.ArgumentParser(prog="python -m regiondrag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    e = sub.add_parser("edit", help="drag the handle regions' content to the target regions")
    _add_inputs(e)
    e.add_argument("--prompt", default=None, help="text prompt (default: empty, or the DragBench file's)")
    e.add_argument("--mask", type=Path, help="editable-area mask PNG (non-zero = may change)")
    e.add_argument("--weights", default=None,
                   help="SD weights: diffusers folder, single-file checkpoint, or hub id (default: SD1.5)")
    e.add_argument("--ip-adapter", default=None,
                   help="IP-Adapter-Plus source (e.g. h94/IP-Adapter or a local folder); the reference uses it")
    e.add_argument("--ip-scale", type=float, default=P.IP_SCALE)
    e.add_argument("--ip-plain-tokens", action="store_true",
                   help="IP-Adapter's own 16 image tokens instead of the reference's 32 (zero image + photo)")
    e.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    e.add_argument("--dtype", choices=DTYPES, default=None, help="default: fp16 on GPU, fp32 on CPU")
    e.add_argument("--steps", type=int, default=P.STEPS)
    e.add_argument("--start-t", type=float, default=P.START_T)
    e.add_argument("--end-t", type=float, default=P.END_T)
    e.add_argument("--noise-scale", type=float, default=P.NOISE_SCALE)
    e.add_argument("--seed", type=int, default=P.SEED)
    e.add_argument("--method", choices=P.METHODS, default="encode_then_cp")
    e.add_argument("--grid", choices=P.GRIDS, default="reference")
    e.add_argument("--paste-schedule", choices=PASTE_SCHEDULES, default="every_step")
    e.add_argument("--no-attention-swap", action="store_true", help="ablation: plain self-attention")
    e.add_argument("--point-fraction", type=float, default=1.0, help="ablation: keep this fraction of pairs")
    e.add_argument("--preview-out", type=Path, help="also save CP-then-Encode's copy-pasted preview here")
    e.add_argument("--quiet", action="store_true", help="no progress bars")

    v = sub.add_parser("preview", help="draw the regions and their dense mapping over the photo (no model)")
    _add_inputs(v)

    u = sub.add_parser("ui", help="the browser editor: draw regions, see the preview, drag (needs regiondrag[ui])")
    u.add_argument("--weights", default=None, help="SD weights, as for edit (a local folder works offline)")
    u.add_argument("--ip-adapter", default=None, help="IP-Adapter-Plus source, as for edit")
    u.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    u.add_argument("--dtype", choices=DTYPES, default=None, help="default: fp16 on GPU, fp32 on CPU")
    u.add_argument("--host", default="127.0.0.1", help="address to serve on (default %(default)s: this machine only)")
    u.add_argument("--port", type=int, default=7860)
    u.add_argument("--max-side", type=int, default=MAX_SIDE, help="long side the model works at (default %(default)s)")
    return parser


def _check_outputs(args: argparse.Namespace, *outputs: Optional[Path]) -> None:
    inputs = {p.resolve() for p in (args.image, args.regions, getattr(args, "mask", None)) if p is not None}
    for out in outputs:
        if out is not None and out.resolve() in inputs:
            raise UsageError(f"refusing to overwrite the input {out}; choose another output path")
        if out is not None:
            image_format(out)  # an unknown extension fails now, not after the edit


def _read_regions(args: argparse.Namespace, photo_size):
    """(regions, mapping, prompt, mask) from our JSON or a DragBench pickle."""
    if args.regions.suffix == ".pkl":
        meta = read_meta_data(args.regions)
        return None, region_mapping(meta, photo_size, working_size(*photo_size, args.max_side)), meta.prompt, meta.mask
    return regions_from_json(args.regions, photo_size), None, None, None


def run_preview(args: argparse.Namespace) -> Path:
    _check_outputs(args, args.out)
    photo = load_image(args.image)
    regions, mapping, _, _ = _read_regions(args, photo.size)
    if regions is None:
        raise UsageError("preview draws region files; a DragBench pickle holds only mapped pairs")
    latent = latent_size_of(working_size(*photo.size, args.max_side))  # the grid the edit maps on
    return save_image_atomic(draw_preview(photo, regions, dense_mapping(regions, photo.size, latent), latent), args.out)


def run_edit(args: argparse.Namespace) -> Path:
    from .attention_swap import AttentionSwap
    from .pipeline import RegionDragPipeline

    _check_outputs(args, args.out, args.preview_out)
    photo = load_image(args.image)
    regions, mapping, prompt, mask = _read_regions(args, photo.size)
    if args.mask is not None:
        mask = np.asarray(load_image(args.mask).convert("L")) > 0
    pipe = RegionDragPipeline.from_pretrained(args.weights, ip_adapter=args.ip_adapter,
                                              ip_reference_layout=not args.ip_plain_tokens, device=args.device,
                                              dtype=DTYPES.get(args.dtype))
    result = pipe.edit(photo, regions, args.prompt if args.prompt is not None else (prompt or ""), mask,
                       mapping=mapping, steps=args.steps, start_t=args.start_t, end_t=args.end_t,
                       noise_scale=args.noise_scale, seed=args.seed, method=args.method, ip_scale=args.ip_scale,
                       grid=args.grid, paste_schedule=args.paste_schedule,
                       attention_swap=AttentionSwap(enabled=not args.no_attention_swap),
                       point_fraction=args.point_fraction, max_side=args.max_side, progress=not args.quiet)
    if args.preview_out is not None and result.preview is not None:
        save_image_atomic(result.preview, args.preview_out)
    return save_image_atomic(result.image, args.out)


def run_ui(args: argparse.Namespace) -> None:
    """Load the models once, then serve the page until interrupted."""
    try:
        from . import ui
    except ImportError as e:
        raise UsageError(f"the browser editor needs gradio ({e}); install it with pip install -e '.[ui]'") from None
    from .pipeline import RegionDragPipeline

    pipe = RegionDragPipeline.from_pretrained(args.weights, ip_adapter=args.ip_adapter, device=args.device,
                                              dtype=DTYPES.get(args.dtype))
    try:
        ui.launch(pipe, args.host, args.port, args.max_side)
    except OSError:  # gradio's message names its own environment variable and launch() argument
        raise UsageError(f"cannot serve on {args.host}:{args.port} (the port is taken, or the host is not "
                         f"this machine's); choose another --port or --host") from None


def main(argv: Optional[list[str]] = None) -> int:
    import weights

    args = build_parser().parse_args(argv)
    try:
        if args.command == "ui":
            run_ui(args)  # serves until interrupted
            return 0
        out = run_edit(args) if args.command == "edit" else run_preview(args)
    except (RegionError, DatasetError, ImageError, UsageError, weights.WeightsError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
