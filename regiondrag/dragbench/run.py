"""DragBench-SR/DR evaluation as the paper reports it: edit every sample, then MD and LPIPS (x100).

    models = pretrained_models(ip_adapter=IP_ADAPTER_REPO)
    store, counts = evaluate(find_samples("drag_data"), [Variant("encode_then_cp")], "outputs/eval", models)
    print(paper_table(summarize(store, samples, variants)))

What follows the reference evaluation (RegionDrag run_eval.py, region_utils/evaluator.py):
- the edit reads the region file (prompt, editable mask, dense pairs), at the photo's own size;
- Mean Distance uses the point file (sparse handle/target clicks and its prompt), DIFT
  features of SD2.1; LPIPS (AlexNet) compares the original photo and the edit;
- a subset's score is the mean over its samples, printed x100 in the paper.
The reference draws DIFT's noise from the global RNG after each edit; we seed a generator
per sample instead, so a score does not depend on which samples ran before it.

Resumable: each edit is saved as <save_dir>/<variant>/<subset folder>/<sample>/dragged_image.png
and each result is appended to <save_dir>/results.jsonl as soon as it exists. A rerun reuses
both (an image without a result is only measured), so an interruption costs one sample.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..image_io import ImageError, PathLike, load_image, save_image_atomic, working_size
from ..pipeline import DTYPES, SEED, RegionDragPipeline, default_device_dtype
from ..regions import RegionError
from .metrics import DIFT, lpips_distance, mean_distance
from .reader import SUBSET_TITLES, SUBSETS, DatasetError, Sample, find_samples, region_mapping
from .report import markdown_table


METRIC_SCALE = 100  # the paper prints MD and LPIPS x100
# RegionDrag paper (ECCV 2024), Table 1: RegionDrag's (MD x100, LPIPS x100) per benchmark
PAPER_SCORES = {"sr": (6.4, 9.9), "dr": (6.6, 9.2)}
PAPER_SECONDS_PER_EDIT = 1.5  # RegionDrag paper and README ("run time to 1.5 seconds")
DIFT_MODEL = "stabilityai/stable-diffusion-2-1"  # RegionDrag evaluator.py `load_sd`
EDIT_FILE = "dragged_image.png"  # the reference UI's name for a saved edit (region_utils/drag.py `drag`)
RESULTS_FILE = "results.jsonl"
SETTINGS_FILE = "settings.json"
# --random-tiny: DIFT at 64 px with 2 noised copies instead of 768 px and 8 (the tiny UNet is for speed only)
TINY_DIFT_SIZE = 64
TINY_DIFT_ENSEMBLE = 2


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked; the message says why."""


# -- models ------------------------------------------------------------------------------------

@dataclass
class Metrics:
    dift: DIFT
    lpips: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.lpips.parameters()).device


class Models:
    """The editing pipeline and the metric networks, each built on first use: a finished run that
    is only tabulated again loads nothing, and one that only measures loads no SD1.5."""

    def __init__(self, pipeline: Callable[[], RegionDragPipeline], metrics: Callable[[], Metrics], setup: dict):
        self._pipeline, self._metrics, self.setup = pipeline, metrics, setup

    @cached_property
    def pipeline(self) -> RegionDragPipeline:
        return self._pipeline()

    @cached_property
    def metrics(self) -> Metrics:
        return self._metrics()


def pretrained_models(sd_weights: Optional[str] = None, ip_adapter: Optional[str] = None,
                      dift_weights: str = DIFT_MODEL, device: Optional[str] = None,
                      dtype: Optional[torch.dtype] = None, max_side: Optional[int] = None) -> Models:
    """SD1.5 (+ IP-Adapter-Plus) for the edits, SD2.1 DIFT and LPIPS (v0.1, AlexNet) for the metrics."""
    import weights
    from weights.lpips import load_lpips

    device, dtype = default_device_dtype(device, dtype)

    def pipeline() -> RegionDragPipeline:
        return RegionDragPipeline.from_pretrained(sd_weights, ip_adapter=ip_adapter, device=device, dtype=dtype)

    def metrics() -> Metrics:
        load = dict(dtype=dtype, device=device)
        dift = DIFT(weights.load_unet(dift_weights, **load), weights.load_vae(dift_weights, **load),
                    weights.load_text_encoder(dift_weights, **load))
        return Metrics(dift, load_lpips().to(device=device, dtype=dtype))

    setup = dict(weights=sd_weights or weights.DEFAULT_MODEL, ip_adapter=ip_adapter, dift_weights=dift_weights,
                 dtype=str(dtype), max_side=max_side)
    return Models(pipeline, metrics, setup)


def random_tiny_models(device: str = "cpu", max_side: Optional[int] = None) -> Models:
    """Tiny random-weight models (tests, --random-tiny): the whole evaluation runs in seconds on a CPU.
    The scores mean nothing; the plumbing is what is exercised."""
    from models import AutoencoderKL, UNet, UNetConfig, VAEConfig
    from models.lpips import LPIPS

    def tiny(seed: int):
        torch.manual_seed(seed)
        unet, vae = UNet(UNetConfig.tiny()).to(device).eval(), AutoencoderKL(VAEConfig.tiny()).to(device).eval()
        context = torch.randn(1, 77, unet.cfg.context_dim, device=device)
        return unet, vae, lambda prompt: context  # a fixed embedding stands in for the text encoder

    def metrics() -> Metrics:
        dift = DIFT(*tiny(1), image_size=TINY_DIFT_SIZE, ensemble=TINY_DIFT_ENSEMBLE)
        lpips = LPIPS()  # drawn after tiny()'s seeding, so the same in every run
        with torch.no_grad():
            for lin in lpips.lins:
                lin.weight.abs_()  # LPIPS heads are non-negative, so distances are too
        return Metrics(dift, lpips.to(device).eval())

    return Models(lambda: RegionDragPipeline(*tiny(0)), metrics, dict(weights="random-tiny", max_side=max_side))


# -- one sample --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """One way of editing every sample: a name (its folder and record key) and keyword arguments
    of RegionDragPipeline.edit on top of the sample's own inputs."""
    name: str
    edit_kwargs: dict = field(default_factory=dict)


def edit_sample(pipe: RegionDragPipeline, sample: Sample, edit_kwargs: dict, max_side: Optional[int] = None):
    """(edited photo, seconds) for one sample's region file; the time is a full edit, inversion included.

    By default the photo is edited at its own size, as the reference, floored to multiples of 8
    (where the reference's VAE would pad instead) with the pairs scaled to match.
    """
    photo, meta = sample.image(), sample.region_meta()
    side = max_side or max(photo.size)  # default: the photo's own size, as the reference
    mapping = region_mapping(meta, photo.size, working_size(*photo.size, side))
    pipe.clear_cache()  # a cached inversion of this photo (another variant) would shorten the timing
    clock = time.perf_counter()
    result = pipe.edit(photo, prompt=meta.prompt, mask=meta.mask, mapping=mapping, max_side=side, progress=False,
                       **edit_kwargs)
    return result.image, time.perf_counter() - clock  # decoding to a PIL image has synchronised the device


def measure_sample(metrics: Metrics, sample: Sample, edited: PathLike) -> dict[str, float]:
    """Raw (not x100) Mean Distance on the point file's clicks and LPIPS of original vs edit."""
    # np.array copies: torch.from_numpy warns on the read-only view np.asarray gives of a PIL image
    original, result = np.array(sample.image()), np.array(load_image(edited))
    points = sample.point_meta()
    generator = torch.Generator(metrics.device).manual_seed(SEED)
    md = mean_distance(original, result, points.handle, points.target, points.prompt, metrics.dift, generator)
    return {"md": md, "lpips": lpips_distance(original, result, metrics.lpips)}


# -- a whole run -------------------------------------------------------------------------------

class ResultStore:
    """Per-(variant, sample) records in a JSON-lines file; a later line adds fields to earlier ones.

    Each line is one O_APPEND write, flushed to disk: a crash leaves at most one cut line, which
    is skipped on reading (that step then reruns).
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.records: dict[tuple[str, str], dict] = {}
        text = self.path.read_text() if self.path.is_file() else ""
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.records.setdefault((record["variant"], record["sample"]), {}).update(record)
        self._cut = bool(text) and not text.endswith("\n")  # the next line must not join the cut one

    def get(self, variant: str, sample: str) -> dict:
        return self.records.get((variant, sample), {})

    def add(self, variant: str, sample: str, **fields: Any) -> None:
        record = {"variant": variant, "sample": sample, **fields}
        line = ("\n" if self._cut else "") + json.dumps(record) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._cut = False
        self.records.setdefault((variant, sample), {}).update(record)


def _write_json_atomic(path: Path, data: Any) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(part, path)


def _check_settings(save_dir: Path, variants: Sequence[Variant], setup: dict) -> None:
    """Refuse to mix results of other models or settings into a save folder; record ours."""
    path = save_dir / SETTINGS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {"setup": setup, "variants": {}}
    if saved["setup"] != setup:
        raise EvaluationError(f"{save_dir} holds results of another setup ({saved['setup']}, now {setup}); "
                              "choose another --save-dir")
    for v in variants:
        kwargs = json.loads(json.dumps(v.edit_kwargs))  # as it reads back
        if saved["variants"].setdefault(v.name, kwargs) != kwargs:
            raise EvaluationError(f"{save_dir}: {v.name!r} was run with {saved['variants'][v.name]}, now {kwargs}; "
                                  "choose another --save-dir")
    _write_json_atomic(path, saved)


def edit_path(save_dir: PathLike, variant: Variant, sample: Sample) -> Path:
    return Path(save_dir) / variant.name / SUBSETS[sample.subset] / sample.name / EDIT_FILE


@dataclass
class RunCounts:
    edited: int = 0    # edits made in this run
    measured: int = 0  # samples scored in this run (edited now or found saved)
    reused: int = 0    # samples whose scores were already recorded


def evaluate(samples: Sequence[Sample], variants: Sequence[Variant], save_dir: PathLike, models: Models, *,
             progress: bool = True) -> tuple[ResultStore, RunCounts]:
    """Edit and score every sample under every variant, skipping what save_dir already holds."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(save_dir, variants, models.setup)
    store, counts = ResultStore(save_dir / RESULTS_FILE), RunCounts()
    max_side = models.setup.get("max_side")
    with tqdm(total=len(samples) * len(variants), disable=not progress, desc="DragBench", unit="edit") as bar:
        for sample in samples:
            for variant in variants:
                bar.set_postfix_str(f"{variant.name} {sample.key}", refresh=False)
                if {"md", "lpips"} <= set(store.get(variant.name, sample.key)):
                    counts.reused += 1
                else:
                    path = edit_path(save_dir, variant, sample)
                    if not path.is_file():
                        image, seconds = edit_sample(models.pipeline, sample, variant.edit_kwargs, max_side)
                        save_image_atomic(image, path)
                        store.add(variant.name, sample.key, edit_s=seconds)
                        counts.edited += 1
                    store.add(variant.name, sample.key, **measure_sample(models.metrics, sample, path))
                    counts.measured += 1
                bar.update()
    return store, counts


@dataclass(frozen=True)
class Summary:
    variant: str
    subset: str
    samples: int
    md: float                 # mean Mean Distance x100
    lpips: float              # mean LPIPS x100
    seconds: Optional[float]  # median seconds per edit (robust to the first edit's warm-up); None if unknown


def summarize(store: ResultStore, samples: Sequence[Sample], variants: Sequence[Variant]) -> list[Summary]:
    """Per variant and subset (in the samples' order): the paper's numbers."""
    out = []
    for v in variants:
        for subset in dict.fromkeys(s.subset for s in samples):
            records = [store.get(v.name, s.key) for s in samples if s.subset == subset]
            times = [r["edit_s"] for r in records if "edit_s" in r]
            out.append(Summary(v.name, subset, len(records),
                               METRIC_SCALE * statistics.fmean(r["md"] for r in records),
                               METRIC_SCALE * statistics.fmean(r["lpips"] for r in records),
                               statistics.median(times) if times else None))
    return out


SUMMARY_HEADER = ["benchmark", "samples", "MD×100", "LPIPS×100", "s / edit"]


def summary_row(s: Summary) -> list:
    return [SUBSET_TITLES[s.subset], s.samples, s.md, s.lpips, s.seconds]


def paper_table(summaries: Sequence[Summary]) -> str:
    """Ours beside the paper's RegionDrag row, one line per subset (and variant, when several)."""
    several = len({s.variant for s in summaries}) > 1
    header = (["variant"] if several else []) + SUMMARY_HEADER + ["paper MD×100", "paper LPIPS×100",
                                                                  "paper s / edit"]
    rows = [([s.variant] if several else []) + summary_row(s) + [*PAPER_SCORES[s.subset], PAPER_SECONDS_PER_EDIT]
            for s in summaries]
    return markdown_table(header, rows)


def metric_series(summaries: Sequence[Summary], variants: Sequence[Variant]) -> dict[str, dict[str, list[float]]]:
    """{benchmark: {"MD×100": [...], "LPIPS×100": [...]}}, values in the variants' order: what the plots draw."""
    series: dict[str, dict[str, list[float]]] = {}
    for v in variants:
        for s in summaries:
            if s.variant == v.name:
                panels = series.setdefault(SUBSET_TITLES[s.subset], {"MD×100": [], "LPIPS×100": []})
                panels["MD×100"].append(s.md)
                panels["LPIPS×100"].append(s.lpips)
    return series


def write_results_json(path: PathLike, models: Models, variants: Sequence[Variant], summaries: Sequence[Summary],
                       store: ResultStore, samples: Sequence[Sample]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(path, {
        "setup": models.setup, "variants": {v.name: v.edit_kwargs for v in variants},
        "summary": [asdict(s) for s in summaries],
        "paper": {"scores_x100": PAPER_SCORES, "seconds_per_edit": PAPER_SECONDS_PER_EDIT},
        "samples": [store.get(v.name, s.key) for v in variants for s in samples]})
    return path


# -- the scripts' shared command line ----------------------------------------------------------

SUBSET_CHOICES = {"sr": ("sr",), "dr": ("dr",), "both": tuple(SUBSETS)}


def _positive_int(text: str) -> int:
    """A count of at least 1 (a slice by 0 or -1 would silently drop samples)."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path,
                        help="folder holding dragbench-sr/ and dragbench-dr/ (or one of the two)")
    parser.add_argument("--subset", choices=SUBSET_CHOICES, default="both")
    parser.add_argument("--limit", type=_positive_int, default=None, help="only the first N samples of each subset")


def add_model_arguments(parser: argparse.ArgumentParser, default_save_dir: str) -> None:
    """Everything a script that edits and scores needs, besides its variants."""
    from weights.ip_adapter import IP_ADAPTER_REPO

    add_data_arguments(parser)
    parser.add_argument("--weights", default=None, help="SD1.5 weights: diffusers folder, checkpoint or hub id")
    parser.add_argument("--ip-adapter", default=IP_ADAPTER_REPO,
                        help="IP-Adapter-Plus source, as the reference uses (default %(default)s; 'none': without)")
    parser.add_argument("--dift-weights", default=DIFT_MODEL, help="SD2.1 weights for DIFT (default %(default)s)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="default: fp16 on GPU (the reference's), fp32 on CPU")
    parser.add_argument("--max-side", type=int, default=None,
                        help="long side to edit at (default: each photo's own size, as the reference)")
    parser.add_argument("--save-dir", type=Path, default=Path(default_save_dir),
                        help="edits and per-sample results; a rerun resumes from them (default %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--random-tiny", action="store_true", help=argparse.SUPPRESS)  # tests: tiny random models


def models_from_args(args: argparse.Namespace) -> Models:
    if args.random_tiny:
        return random_tiny_models(args.device or "cpu", args.max_side)
    ip_adapter = None if args.ip_adapter.lower() == "none" else args.ip_adapter
    return pretrained_models(args.weights, ip_adapter, args.dift_weights, args.device, DTYPES.get(args.dtype),
                             args.max_side)


def samples_from_args(args: argparse.Namespace) -> list[Sample]:
    return find_samples(args.data, SUBSET_CHOICES[args.subset], args.limit)


def script_main(body: Callable[[], None]) -> int:
    """Run a script's body; an expected failure (data, settings, weights) prints one line, exit code 2."""
    import weights

    try:
        body()
    except (EvaluationError, DatasetError, RegionError, ImageError, weights.WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run_from_args(args: argparse.Namespace, variants: Sequence[Variant]):
    """(models, samples, store, summaries) of the run the arguments describe; prints what it did."""
    samples, models = samples_from_args(args), models_from_args(args)
    store, counts = evaluate(samples, variants, args.save_dir, models, progress=not args.quiet)
    print(f"{len(samples)} samples x {len(variants)} variant(s): edited {counts.edited}, measured {counts.measured}, "
          f"reused {counts.reused} (results in {args.save_dir})")
    return models, samples, store, summarize(store, samples, variants)
