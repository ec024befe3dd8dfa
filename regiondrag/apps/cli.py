"""Command line: `python -m regiondrag edit|preview ...` (see --help of each).

Every input is checked before any model loads: the flags (one EditConfig), the output paths
(a writable image format, none of them an input), the region file, the photo and the masks.
A refusal is one line on stderr and exit code 2; an interrupt (Ctrl-C, SIGTERM, SIGHUP) is
one line and exit code 128 + the signal (130, 143, 129), and leaves no partial file.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from ..config import REFERENCE, ConfigError, EditConfig, check_prompt
from ..copy_paste import PASTE_SCHEDULES
from ..dragbench.reader import DatasetError, read_meta_data, region_mapping
from ..image_io import ImageError, load_image, load_mask, working_size
from ..mapping import dense_mapping, latent_size_of
from ..regions import RegionError, check_edit_inputs
from .memory import failed_allocation
from .outputs import check_output_path, save_image_atomic
from .preview import draw_preview
from .region_file import mask_files, read_region_file, regions_from_json

__version__ = "0.1.0"  # setup.cfg reads it from here

REGION_FORMAT = """\
region file (--regions): JSON, {"pairs": [PAIR, ...]}, the pairs applied together; a PAIR is one of
  {"kind": "masks", "handle": MASK, "target": MASK}          brush masks: handle stretched onto target
  {"kind": "polygons", "handle": [[x, y], ...], "target": [[x, y], ...]}
                                                            3 (affine) or 4 (perspective) vertices each side
  {"kind": "region_points", "region": MASK, "handle": [[x, y], ...], "target": [[x, y], ...]}
                                                            a region dragged by point pairs inside it
  {"kind": "points", "handle": [[x, y], ...], "target": [[x, y], ...], "radius": 16, "shape": "disk"}
                                                            a disk (or "square") around each point moves
  {"kind": "transform", "handle": MASK, "matrix": [[a, b, c], [d, e, f]]}
                                                            the region carried by a pixel matrix (or 3x3)
MASK: a PNG path relative to the JSON file, the photo's size (the region: where alpha > 0 if it has
alpha, else where it is not black), or {"polygon": [[x, y], ...]}. Coordinates are pixels of the photo
as displayed (EXIF orientation applied): x right, y down, from the top-left corner.
--regions may instead be a DragBench meta_data_region.pkl (dense pairs, prompt and editable mask).

Exit codes: 0 written; 2 a refused input, or the edit ran out of memory (one line on stderr says
what and how to fix it); 130 / 143 / 129 interrupted by Ctrl-C / SIGTERM / SIGHUP (no partial file
is left).
"""


class UsageError(ValueError):
    """A command line that cannot be run as given."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP, raised where the program is, so that cleanup (temporary files) runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the whole usage too: one line instead
        raise UsageError(f"{message} (see {self.prog} --help)")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help (flags whose default is 'not given' say it in words)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _path(text: str) -> Path:
    return Path(_path_text(text))


def _path_text(text: str) -> str:
    """A path kept as given: an output's trailing slash (naming a folder) must reach check_output_path."""
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"path {text!r} has a NUL byte")
    return text


def _prompt(text: str) -> str:
    try:
        return check_prompt(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, type=_path, help="the photo to edit (PNG, JPEG, ...)")
    p.add_argument("--regions", required=True, type=_path,
                   help="region file: our JSON format (below), or a DragBench meta_data_region.pkl")
    p.add_argument("--out", required=True, type=_path_text, help="where to write the result (.png or .jpg)")
    p.add_argument("--max-side", type=int, help="long side the model works at, 8 ... 4096 (default: the backbone's: "
                                                "SD1.5 512, SD2.1 768, SDXL 1024)")


def build_parser() -> argparse.ArgumentParser:
    from models.backbones import BACKBONES
    from weights.hub import DEFAULT_MODEL

    from ..config import GRIDS, METHODS
    from ..pipeline import DTYPES

    parser = _Parser(prog="python -m regiondrag", description=__doc__, epilog=REGION_FORMAT, formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = dict(epilog=REGION_FORMAT, formatter_class=_Help)

    e = sub.add_parser("edit", help="drag the handle regions' content to the target regions", **common)
    _add_inputs(e)
    e.add_argument("--prompt", type=_prompt, help="text prompt (default: empty, or the DragBench file's)")
    e.add_argument("--mask", type=_path, help="editable-area mask PNG, the photo's size: alpha > 0 if it has alpha, "
                                              "else not black, may change (default: the whole photo)")
    e.add_argument("--weights", help=f"SD weights: diffusers folder, single-file checkpoint, or hub id "
                                     f"(default: --model's hub id, SD1.5: {DEFAULT_MODEL})")
    e.add_argument("--model", choices=BACKBONES, default="sd15",
                   help="backbone whose hub weights are the default; with --weights, the backbone is the weights' own")
    e.add_argument("--vae", metavar="SRC",
                   help="another VAE (folder, file or hub id), e.g. madebyollin/sdxl-vae-fp16-fix for SDXL in fp16 "
                        "(default: the weights' own)")
    e.add_argument("--ip-adapter", help="IP-Adapter-Plus source (e.g. h94/IP-Adapter or a local folder); the "
                                        "reference uses it (default: none)")
    e.add_argument("--ip-scale", type=float, help="image-prompt scale, with --ip-adapter (default: the backbone's, SD1.5 0.5, SDXL 0.6)")
    e.add_argument("--ip-plain-tokens", action="store_true",
                   help="with --ip-adapter: its own 16 image tokens instead of the reference's 32 (zero image + photo)")
    e.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    e.add_argument("--dtype", choices=DTYPES, help="default: fp16 on GPU; on CPU bf16 where it computes bf16 natively "
                                                   "(AVX512-BF16, AMX, Arm BF16), else fp32")
    e.add_argument("--steps", type=int, help=f"timestep grid of the whole diffusion (default: {REFERENCE.steps})")
    e.add_argument("--start-t", type=float, help=f"fraction of the grid inverted and denoised, in (0, 1) "
                                                 f"(default: {REFERENCE.start_t})")
    e.add_argument("--end-t", type=float, help=f"with --paste-schedule until_end_t: where copy-paste stops, in [0, 1] "
                                               f"(default: {REFERENCE.end_t})")
    e.add_argument("--noise-scale", type=float, help=f"handle noise, in [0, 1] (default: {REFERENCE.noise_scale})")
    e.add_argument("--seed", type=int, help=f"0 ... 2**64 - 1 (default: {REFERENCE.seed})")
    e.add_argument("--method", choices=METHODS, help=f"(default: {REFERENCE.method})")
    e.add_argument("--grid", choices=GRIDS, help=f"(default: {REFERENCE.grid})")
    e.add_argument("--paste-schedule", choices=PASTE_SCHEDULES, help=f"(default: {REFERENCE.paste_schedule})")
    e.add_argument("--no-attention-swap", action="store_true", help="ablation: plain self-attention")
    e.add_argument("--swap-layers", metavar="LAYERS",
                   help='ablation: swap K/V only in these self-attention layers: comma-separated indices, names '
                        'or patterns, e.g. "up.*" (the decoder) or "mid.*,up.1.*"; names in the README (default: all)')
    e.add_argument("--point-fraction", type=float, help=f"ablation: keep this fraction of pairs, in (0, 1] "
                                                        f"(default: {REFERENCE.point_fraction})")
    e.add_argument("--preview-out", type=_path_text, help="with --method cp_then_encode: also save its copy-pasted preview here (default: not saved)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")

    v = sub.add_parser("preview", help="draw the regions and their dense mapping over the photo (no model)", **common)
    _add_inputs(v)

    u = sub.add_parser("ui", help="the browser editor: draw regions, see the preview, drag (needs regiondrag[ui])",
                       formatter_class=_Help)
    u.add_argument("--weights", help=f"SD weights, as for edit; a local folder works offline "
                                     f"(default: --model's hub id, SD1.5: {DEFAULT_MODEL})")
    u.add_argument("--model", choices=BACKBONES, default="sd15", help="backbone whose hub weights are the default (default: sd15)")
    u.add_argument("--vae", metavar="SRC", help="another VAE, as for edit (default: the weights' own)")
    u.add_argument("--ip-adapter", help="IP-Adapter-Plus source, as for edit (default: none)")
    u.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    u.add_argument("--dtype", choices=DTYPES, help="default: as for edit (fp16 on GPU; bf16 on a CPU with native bf16, "
                                                   "else fp32)")
    u.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine only)")
    u.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    u.add_argument("--max-side", type=int, help="long side the model works at (default: the backbone's: "
                                                "SD1.5 512, SD2.1 768, SDXL 1024)")
    u.add_argument("--live-max-s", type=float, metavar="S",
                   help="live mode (edits while the mouse moves) is on by default where the re-edits timed here take "
                        "under S seconds (default: LIVE_MAX_S in regiondrag/apps/canvas.py, 0.25)")
    return parser


# EditConfig settings (EditConfig.with_settings) set by a flag of the same name; a flag not given keeps the base's
CONFIG_FLAGS = ("steps", "start_t", "end_t", "noise_scale", "seed", "method", "ip_scale", "grid", "paste_schedule",
                "point_fraction", "max_side", "swap_layers")
FLAG_OF = {"attention_swap.layers": "--swap-layers", "attention_swap": "--no-attention-swap"}


def edit_config(args: argparse.Namespace, base: EditConfig = REFERENCE) -> EditConfig:
    """The EditConfig the flags describe over `base` (the backbone's defaults); a setting out of range is a
    UsageError naming its flag."""
    given = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "no_attention_swap", False):
        given["attention_swap"] = False
    try:
        return base.with_settings(given)
    except ConfigError as e:
        raise UsageError(f"{FLAG_OF.get(e.field, '--' + e.field.replace('_', '-'))}: {e}") from None


def _check_edit_flags(args: argparse.Namespace, config: EditConfig) -> None:
    """Flags that would be silently ignored, and a device that cannot be used."""
    needs = [(args.preview_out is not None and config.method != "cp_then_encode", "--preview-out",
              "--method cp_then_encode (only it makes a preview)"),
             (args.ip_scale is not None and not args.ip_adapter, "--ip-scale", "--ip-adapter"),
             (args.ip_plain_tokens and not args.ip_adapter, "--ip-plain-tokens", "--ip-adapter"),
             (args.end_t is not None and config.paste_schedule != "until_end_t", "--end-t",
              "--paste-schedule until_end_t (the only schedule that reads it)")]
    for ignored, flag, needed in needs:
        if ignored:
            raise UsageError(f"{flag} has no effect without {needed}; add that or drop {flag}")
    _check_device(args)


def _check_device(args: argparse.Namespace) -> None:
    """--device names a device here, and --dtype is one it computes natively (fp16 on most CPUs is emulated)."""
    import torch

    from ..pipeline import DTYPES, default_device_dtype
    from ..precision import emulated_dtype_error

    if args.device is not None:
        try:
            device = torch.device(args.device)
        except (RuntimeError, ValueError):
            raise UsageError(f"--device {args.device!r} is not a device; use cpu, cuda or cuda:N") from None
        if device.type not in ("cpu", "cuda"):
            raise UsageError(f"--device {args.device!r}: use cpu, cuda or cuda:N")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             f"use --device cpu")
    if args.dtype is not None:
        error = emulated_dtype_error(default_device_dtype(args.device)[0], DTYPES[args.dtype])
        if error:
            raise UsageError(f"--dtype {args.dtype}: {error}")


def _say_precision(pipe) -> None:
    """One line on stderr once the models are loaded: the device and dtype they run in, and why."""
    from ..precision import precision_note

    print(f"running on {pipe.device} in {precision_note(pipe.device, pipe.dtype)}", file=sys.stderr)


def _same_file(a, b) -> bool:
    """The same path after resolving links, or the same file by identity (hard links, bind mounts)."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
        return os.path.samefile(a, b)
    except (OSError, RuntimeError, ValueError):  # one does not exist (yet), a symlink loop, a NUL byte
        return False


def _check_outputs(outputs: list[Optional[str]], inputs: list[Path]) -> None:
    outputs = [out for out in outputs if out is not None]
    for out in outputs:
        for path in inputs:
            if _same_file(out, path):
                raise UsageError(f"refusing to overwrite the input {path} with the output {out}; "
                                 f"choose another output path")
        check_output_path(out)  # an unwritable format or place fails now, not after the edit
    if len(outputs) == 2 and _same_file(*outputs):
        raise UsageError(f"--out and --preview-out are both {outputs[0]}; give two different paths")


def _read_inputs(args: argparse.Namespace, outputs: list[Optional[str]]):
    """(photo, regions, mapping, prompt, mask): every input read and checked, outputs checked first."""
    pickled = args.regions.suffix == ".pkl"
    meta = read_meta_data(args.regions) if pickled else None
    doc = None if pickled else read_region_file(args.regions)
    mask_path = getattr(args, "mask", None)
    inputs = [args.image, args.regions, *([mask_path] if mask_path else []),
              *([] if pickled else mask_files(doc, args.regions.parent))]
    _check_outputs(outputs, inputs)
    photo = load_image(args.image)
    work_size = working_size(*photo.size, args.config.max_side)
    if pickled:
        regions, mapping, prompt, mask = None, region_mapping(meta, photo.size, work_size), meta.prompt, meta.mask
    else:
        regions, mapping, prompt, mask = regions_from_json(doc, photo.size, args.regions.parent), None, None, None
    if mask_path is not None:
        mask = load_mask(mask_path, "--mask")
    check_edit_inputs(regions, mapping, mask, photo.size, latent_size_of(work_size))
    return photo, regions, mapping, prompt, mask


def run_preview(args: argparse.Namespace) -> Path:
    args.config = edit_config(args)
    if args.regions.suffix == ".pkl":
        raise UsageError("preview draws region files; a DragBench pickle holds only mapped pairs")
    photo, regions, _, _, _ = _read_inputs(args, [args.out])
    latent = latent_size_of(working_size(*photo.size, args.config.max_side))  # the grid the edit maps on
    return save_image_atomic(draw_preview(photo, regions, dense_mapping(regions, photo.size, latent), latent), args.out)


def run_edit(args: argparse.Namespace) -> Path:
    from ..pipeline import DTYPES, RegionDragPipeline, backbone_config

    args.config = edit_config(args, backbone_config(args.model))
    _check_edit_flags(args, args.config)
    photo, regions, mapping, prompt, mask = _read_inputs(args, [args.out, args.preview_out])
    pipe = RegionDragPipeline.from_pretrained(args.weights, model=args.model, vae=args.vae, ip_adapter=args.ip_adapter,
                                              ip_reference_layout=not args.ip_plain_tokens, device=args.device,
                                              dtype=DTYPES.get(args.dtype))
    _say_precision(pipe)
    if pipe.backbone != args.model:  # --weights of another backbone: its defaults, its working size
        args.config = edit_config(args, pipe.config)
        photo, regions, mapping, prompt, mask = _read_inputs(args, [args.out, args.preview_out])
    result = pipe.edit(photo, regions, args.prompt if args.prompt is not None else (prompt or ""), mask,
                       mapping=mapping, config=args.config, progress=not args.quiet)
    if args.preview_out is not None:
        save_image_atomic(result.preview, args.preview_out)
    return save_image_atomic(result.image, args.out)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextmanager
def _signals_raise():
    """SIGTERM and SIGHUP raise Interrupted (as Ctrl-C raises KeyboardInterrupt) while the command runs."""
    if threading.current_thread() is not threading.main_thread():  # signals can be set in the main thread only
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _error(message: str) -> None:
    print("error: " + re.sub(r"\s*\n\s*", " ", message.strip()), file=sys.stderr)  # one line, always


def run_ui(args: argparse.Namespace) -> None:
    """Load the models once, then serve the page until interrupted."""
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a port; use 1 ... 65535")
    if args.max_side is not None:
        edit_config(args)  # range-checks --max-side before the slow load
    if args.live_max_s is not None and not 0 < args.live_max_s < float("inf"):
        raise UsageError(f"--live-max-s {args.live_max_s:g} is not a time; give seconds > 0, e.g. 0.25")
    try:
        from . import ui
    except ImportError as e:
        raise UsageError(f"the browser editor needs gradio ({e}); install it with pip install -e '.[ui]'") from None
    from ..pipeline import DTYPES, RegionDragPipeline

    _check_device(args)
    pipe = RegionDragPipeline.from_pretrained(args.weights, model=args.model, vae=args.vae, ip_adapter=args.ip_adapter,
                                              device=args.device, dtype=DTYPES.get(args.dtype))
    _say_precision(pipe)
    try:
        ui.launch(pipe, args.host, args.port, args.max_side or pipe.config.max_side, live_max_s=args.live_max_s)
    except OSError:  # gradio's message names its own environment variable and launch() argument
        raise UsageError(f"cannot serve on {args.host}:{args.port} (the port is taken, or the host is not "
                         f"this machine's); choose another --port or --host") from None


def main(argv: Optional[list[str]] = None) -> int:
    try:
        import weights

        with _signals_raise():
            args = build_parser().parse_args(argv)
            if args.command == "ui":
                run_ui(args)  # serves until interrupted
                return 0
            out = run_edit(args) if args.command == "edit" else run_preview(args)
    except KeyboardInterrupt:
        _error("interrupted (Ctrl-C); no partial output was left")
        return 128 + signal.SIGINT
    except Interrupted as e:
        _error(f"stopped by {signal.Signals(e.signum).name}; no partial output was left")
        return 128 + e.signum
    except (RegionError, DatasetError, ImageError, UsageError, ConfigError, weights.WeightsError,
            FloatingPointError) as e:
        _error(str(e))
        return 2
    except (MemoryError, RuntimeError) as e:
        asked = failed_allocation(e)
        if asked is None:
            raise
        _error(f"out of memory: an allocation of {asked} failed, and no output was written; use a smaller "
               f"--max-side (the long side the model works at), half precision (--dtype fp16 or bf16), "
               f"or a GPU (--device cuda)")
        return 2
    print(f"wrote {out}")
    return 0
