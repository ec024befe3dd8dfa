"""DragBench-SR/DR evaluation: edit every sample, then score it (metrics.py): Mean Distance under both
protocols (RegionDrag's, the paper's table, x100; DragDiffusion's, the field's, in pixels), DAI and LPIPS.

    models = pretrained_models(ip_adapter=IP_ADAPTER_REPO)
    settings = [Setting("encode_then_cp")]
    store, counts = evaluate(find_samples("drag_data"), settings, "outputs/eval", models)
    print(paper_table(summarize(store, samples, settings)))

A `Setting` is an EditConfig (the method's settings) and the annotation each sample is edited
with (reader.ANNOTATIONS; "auto": the region file if there, else i4p, else points), or one of the
BASELINES that anchor a table: `identity` (the photo unchanged: LPIPS 0, MD how far the points had
to move) and `copy_paste` (the pixel copy-paste preview, no diffusion). What follows the reference
evaluation (RegionDrag run_eval.py, region_utils/evaluator.py):
- with the region annotation, the edit reads the region file (prompt, editable mask, dense
  pairs); every edit is at the photo's own size (`EVALUATION`);
- Mean Distance uses the point file (sparse handle/target clicks and its prompt), DIFT
  features of SD2.1; LPIPS (AlexNet) compares the original photo and the edit;
- a subset's score is the mean over its samples (DragDiffusion's MD: over all its points), the
  paper's MD and LPIPS printed x100.
The references draw DIFT's noise from the global RNG after each edit; we seed a generator per
sample and protocol instead, so a score does not depend on which samples ran before it.

Work order: per sample, the settings whose inversions agree (`EditConfig.inversion`) run one after
another, so the pipeline's cached inversion serves them all; an edit's time is still that of
a standalone edit (the shared inversion's time is added back).

Resumable: each edit is saved as <save_dir>/<setting>/<annotation>/<subset folder>/<sample>/
dragged_image.png and each result is appended to a results file in <save_dir> as soon as it
exists. A rerun reuses both (an image without a result is only measured), so an interruption
costs one sample. Under torchrun each rank takes a disjoint share of the work
(`distributed.Shard`) and appends to its own results file; all of them are read back.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from models.backbones import BACKBONES

from ..config import REFERENCE, EditConfig
from ..apps.outputs import save_image_atomic
from ..image_io import ImageError, PathLike, load_image, working_size
from ..pipeline import DTYPES, METHODS, SEED, RegionDragPipeline, default_device_dtype
from ..regions import DEFAULT_POINT_RADIUS, RegionError
from . import distributed
from .metrics import DAI_RADII, DIFT, DRAGDIFFUSION, REGIONDRAG, dai, lpips_distance, point_distances
from .reader import (ANNOTATION_CHOICES, ANNOTATIONS, AUTO, SUBSET_TITLES, SUBSETS, DatasetError, Sample,
                     find_samples)
from .report import markdown_table, write_text_atomic


# the paper prints MD and LPIPS x100 (checked 2026-12-05 via Inpaint4Drag, same authors and evaluator, arXiv
# 2509.04582v1 Table 1: "MD and LPIPS values are scaled by 100"; RegionDrag's run_eval.py prints the raw fractions)
METRIC_SCALE = 100
# a sample's record keys of the two Mean Distances ("md": RegionDrag's, as results files have always had it)
MD_KEYS = {"md": REGIONDRAG, "md_dragdiffusion": DRAGDIFFUSION}
SCORE_KEYS = {*MD_KEYS, "dai", "lpips"}  # a sample with all of them is measured
BASELINES = ("identity", "copy_paste")  # the photo unchanged; the pixel copy-paste preview alone
# RegionDrag paper (ECCV 2024, arXiv 2407.18247), Table 1: RegionDrag's (MD x100, LPIPS x100) per benchmark.
# NOT checked against the paper: transcribed from reviews of it; no text of that table was reachable when the
# README's published numbers were checked (2026-12-05). Check them in the PDF before relying on them.
PAPER_SCORES = {"sr": (6.4, 9.9), "dr": (6.6, 9.2)}
PAPER_SECONDS_PER_EDIT = 1.5  # RegionDrag paper and README ("run time to 1.5 seconds")
PAPER_ANNOTATION = "region"  # what the paper's numbers were measured with
# SD2.1, as RegionDrag's evaluator.py `load_sd` and DragDiffusion's dift_sd.py load it (now from its mirror)
DIFT_MODEL = BACKBONES["sd21"].hub_id
EDIT_FILE = "dragged_image.png"  # the reference UI's name for a saved edit (region_utils/drag.py `drag`)
RESULTS_FILE = "results.jsonl"  # a single process's; rank r of a torchrun writes results.rank<r>.jsonl
SETTINGS_FILE = "settings.json"
# The reference's evaluation settings, each photo at its own size (floored to multiples of 8)
EVALUATION = REFERENCE.replace(max_side=None)
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
    """The editing pipelines (one per backbone the settings use) and the metric networks, each built
    on first use: a finished run that is only tabulated again loads nothing, and one that only
    measures loads no SD1.5."""

    def __init__(self, pipeline: Callable[[Optional[str]], RegionDragPipeline], metrics: Callable[[], Metrics],
                 setup: dict):
        self._pipeline, self._metrics, self.setup = pipeline, metrics, setup
        self._pipelines: dict[Optional[str], RegionDragPipeline] = {}

    def pipeline(self, weights: Optional[str] = None) -> RegionDragPipeline:
        """The pipeline of a setting's backbone: SD weights as --weights takes them; None: the run's."""
        if weights not in self._pipelines:
            self._pipelines[weights] = self._pipeline(weights)
        return self._pipelines[weights]

    def clear_caches(self) -> None:
        """Forget every pipeline's cached inversion."""
        for pipeline in self._pipelines.values():
            pipeline.clear_cache()

    @cached_property
    def metrics(self) -> Metrics:
        return self._metrics()


def pretrained_models(sd_weights: Optional[str] = None, ip_adapter: Optional[str] = None,
                      dift_weights: str = DIFT_MODEL, device: Optional[str] = None,
                      dtype: Optional[torch.dtype] = None) -> Models:
    """SD1.5 (+ IP-Adapter-Plus) for the edits, SD2.1 DIFT and LPIPS (v0.1, AlexNet) for the metrics."""
    import weights
    from weights.lpips import load_lpips

    device, dtype = default_device_dtype(device, dtype)

    def pipeline(backbone: Optional[str]) -> RegionDragPipeline:
        return RegionDragPipeline.from_pretrained(backbone or sd_weights, ip_adapter=ip_adapter, device=device,
                                                  dtype=dtype)

    def metrics() -> Metrics:
        load = dict(dtype=dtype, device=device)
        dift = DIFT(weights.load_unet(dift_weights, **load), weights.load_vae(dift_weights, **load),
                    weights.load_text_encoder(dift_weights, **load))
        return Metrics(dift, load_lpips().to(device=device, dtype=dtype))

    setup = dict(weights=sd_weights or weights.DEFAULT_MODEL, ip_adapter=ip_adapter, dift_weights=dift_weights,
                 dtype=str(dtype))
    return Models(pipeline, metrics, setup)


def random_tiny_models(device: str = "cpu") -> Models:
    """Tiny random-weight models (tests, --random-tiny): the whole evaluation runs in seconds on a CPU.
    The scores mean nothing; the plumbing is what is exercised."""
    from models import UNetConfig, VAEConfig
    from models.lpips import LPIPS
    from models.random_weights import random_sd

    def tiny(seed: int):
        unet, vae, context = random_sd(UNetConfig.tiny(), VAEConfig.tiny(), seed)
        context = context.to(device)
        return unet.to(device), vae.to(device), lambda prompt: context

    def metrics() -> Metrics:
        dift = DIFT(*tiny(1), image_size=TINY_DIFT_SIZE, ensemble=TINY_DIFT_ENSEMBLE)
        lpips = LPIPS()  # drawn after tiny()'s seeding, so the same in every run
        with torch.no_grad():
            for lin in lpips.lins:
                lin.weight.abs_()  # LPIPS heads are non-negative, so distances are too
        return Metrics(dift, lpips.to(device).eval())

    def pipeline(backbone: Optional[str]) -> RegionDragPipeline:  # each backbone name: other random weights
        return RegionDragPipeline(*tiny(0 if backbone is None else zlib.crc32(backbone.encode())))

    return Models(pipeline, metrics, dict(weights="random-tiny"))


# -- settings ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One way of editing every sample: a name (its folder and record key), the method's settings,
    which of each sample's annotations the edit reads, and the backbone it edits with."""
    name: str
    config: EditConfig = EVALUATION
    annotation: str = AUTO                      # one of reader.ANNOTATION_CHOICES
    point_radius: float = DEFAULT_POINT_RADIUS  # the points annotation's disk radius (pixels)
    weights: Optional[str] = None               # SD weights as --weights takes them; None: the run's --weights
    baseline: Optional[str] = None              # one of BASELINES instead of the method (given as its `method`)

    def __post_init__(self):
        if self.annotation not in ANNOTATION_CHOICES:
            raise EvaluationError(f"unknown annotation {self.annotation!r}; choose one of "
                                  f"{', '.join(ANNOTATION_CHOICES)}")

    def as_json(self) -> dict:
        """Its fields as JSON; `baseline` only when set, so that save folders of earlier runs still match."""
        return {"config": config_as_json(self.config), "annotation": self.annotation,
                "point_radius": self.point_radius, "weights": self.weights,
                **({"baseline": self.baseline} if self.baseline else {})}

    def replace(self, **overrides: Any) -> "Setting":
        """This setting with fields replaced by name: its own (name, annotation, point_radius, weights)
        and EditConfig's settings (EditConfig.with_settings: attention_swap also as a dict of AttentionSwap's
        fields, swap_layers, swap_steps); `method` may also name one of the BASELINES."""
        own = {"name": str, "annotation": str, "point_radius": (int, float), "weights": str}
        unknown = sorted(set(overrides) - set(own) - set(EditConfig.setting_names()))
        if unknown:
            raise EvaluationError(f"unknown setting {', '.join(unknown)}; the settings are annotation, "
                                  f"point_radius, weights and EditConfig's {', '.join(EditConfig.setting_names())}")
        for name, kind in own.items():
            value = overrides.get(name)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise EvaluationError(f"setting {name} must be a {getattr(kind, '__name__', 'number')}, got {value!r}")
        baseline = self.baseline if "method" not in overrides else None
        if overrides.get("method") in BASELINES:
            baseline = overrides.pop("method")
        try:
            config = self.config.with_settings({k: v for k, v in overrides.items() if k not in own})
            if isinstance(overrides.get("point_radius"), int):
                overrides["point_radius"] = float(overrides["point_radius"])
            return dataclasses.replace(self, config=config, baseline=baseline,
                                       **{k: v for k, v in overrides.items() if k in own})
        except ValueError as e:  # EditConfig's checks (a ConfigError), or the annotation's
            raise EvaluationError(str(e)) from None


def config_as_json(config: EditConfig) -> dict:
    """An EditConfig as plain JSON values (frozensets as sorted lists), field by field."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return sorted(value, key=lambda v: (isinstance(v, str), v)) if isinstance(value, frozenset) else value
    return plain(config)


# -- one sample --------------------------------------------------------------------------------

class Editor:
    """Edits samples, each setting with its backbone's pipeline, timing each as a standalone edit:
    when a pipeline reuses the previous edit's inversion (its cache), that inversion's time is
    added back. Only one pipeline holds a cached inversion at a time (its K/V are large)."""

    def __init__(self, models: Models):
        self.models = models
        self._backbone: Optional[str] = None  # whose pipeline holds the cached inversion
        self._inversion_s: Optional[float] = None  # that inversion's time; None: none made here yet

    def pipeline(self, weights: Optional[str]) -> RegionDragPipeline:
        if self._inversion_s is None or weights != self._backbone:
            self.models.clear_caches()  # so that every inversion reused was made, and timed, here
            self._backbone, self._inversion_s = weights, None
        return self.models.pipeline(weights)

    def __call__(self, sample: Sample, setting: Setting, annotation: str) -> tuple[Image.Image, dict]:
        """(edited photo, {"edit_s", "inversion_s", "shared_inversion"}) of one sample under one setting:
        edit_s counts the inversion (inversion_s of it) even when it was shared (a baseline: edit_s only).

        By default the photo is edited at its own size, as the reference, floored to multiples
        of 8 (where the reference's VAE would pad instead) with the dense pairs scaled to match.
        """
        photo, drag = sample.image(), sample.drag_input(annotation, setting.point_radius)
        side = setting.config.max_side or max(photo.size)  # None: the photo's own size
        config = setting.config.replace(max_side=side)
        inputs = drag.edit_arguments(photo.size, working_size(*photo.size, side))
        clock = time.perf_counter()
        if setting.baseline is not None:  # no model: the photo as it is, or the copy-paste alone
            image = photo if setting.baseline == "identity" else \
                RegionDragPipeline.copy_paste(photo, mask=drag.mask, config=config, **inputs)
            return image, {"edit_s": time.perf_counter() - clock}
        result = self.pipeline(setting.weights).edit(photo, prompt=drag.prompt, mask=drag.mask, config=config,
                                                     progress=False, **inputs)
        seconds = time.perf_counter() - clock  # decoding to a PIL image has synchronised the device
        shared = "inversion_s" not in result.timings  # the pipeline times only an inversion it runs
        if not shared:
            self._inversion_s = sum(result.timings[k] for k in ("conditioning_s", "encode_s", "inversion_s"))
        return result.image, {"edit_s": seconds + (self._inversion_s if shared else 0.0),
                              "inversion_s": self._inversion_s, "shared_inversion": shared}


def measure_sample(metrics: Metrics, sample: Sample, edited: PathLike) -> dict:
    """Every score of original vs edit, raw (not x100), on the point file's clicks: each Mean Distance
    (MD_KEYS; per protocol its per-sample mean, or its per-point distances when a benchmark pools them),
    DAI per radius and LPIPS. Each protocol's DIFT noise comes from its own generator, seeded alike."""
    # np.array copies: torch.from_numpy warns on the read-only view np.asarray gives of a PIL image
    original, result = np.array(sample.image()), np.array(load_image(edited))
    points = sample.point_meta()
    scores: dict[str, Any] = {}
    for key, protocol in MD_KEYS.items():
        generator = torch.Generator(metrics.device).manual_seed(SEED)
        distances = point_distances(original, result, points.handle, points.target, points.prompt, metrics.dift,
                                    protocol, generator)
        scores[key] = distances.tolist() if protocol.pooled else distances.mean().item()
    scores["dai"] = {str(r): v for r, v in dai(original, result, points.handle, points.target).items()}
    scores["lpips"] = lpips_distance(original, result, metrics.lpips)
    return scores


# -- a whole run -------------------------------------------------------------------------------

class ResultStore:
    """Per-(setting, annotation, sample) records in JSON-lines files; a later line adds fields to earlier ones.

    Reads every results*.jsonl of a folder (every rank's) and appends to one of them. Each line
    is one O_APPEND write, flushed to disk: a crash leaves at most one cut line, which is skipped
    on reading (that step then reruns).
    """

    def __init__(self, folder: PathLike, file: str = RESULTS_FILE):
        folder = Path(folder)
        self.path = folder / file
        self.records: dict[tuple[str, str, str], dict] = {}
        for path in sorted(folder.glob("results*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.records.setdefault(self._key(record), {}).update(record)
        self._cut = self.path.is_file() and not self.path.read_bytes().endswith(b"\n")  # don't join a cut line

    @staticmethod
    def _key(record: dict) -> tuple[str, str, str]:
        return record["setting"], record["annotation"], record["sample"]

    def get(self, setting: str, annotation: str, sample: str) -> dict:
        return self.records.get((setting, annotation, sample), {})

    def add(self, setting: str, annotation: str, sample: str, **fields: Any) -> None:
        record = {"setting": setting, "annotation": annotation, "sample": sample, **fields}
        line = ("\n" if self._cut else "") + json.dumps(record) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._cut = False
        self.records.setdefault(self._key(record), {}).update(record)


def _write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _check_settings(save_dir: Path, settings: Sequence[Setting], setup: dict, write: bool) -> None:
    """Refuse to mix results of other models or settings into a save folder; record ours (if `write`)."""
    path = save_dir / SETTINGS_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {"setup": setup, "settings": {}}
    if saved["setup"] != setup:
        raise EvaluationError(f"{save_dir} holds results of another setup ({saved['setup']}, now {setup}); "
                              "choose another --save-dir")
    for s in settings:
        mine = json.loads(json.dumps(s.as_json()))  # as it reads back
        if saved["settings"].setdefault(s.name, mine) != mine:
            raise EvaluationError(f"{save_dir}: {s.name!r} was run with {saved['settings'][s.name]}, now {mine}; "
                                  "choose another --save-dir or another setting name")
    if write:
        _write_json_atomic(path, saved)


def edit_path(save_dir: PathLike, setting: Setting, annotation: str, sample: Sample) -> Path:
    return Path(save_dir) / setting.name / annotation / SUBSETS[sample.subset] / sample.name / EDIT_FILE


def work_groups(samples: Sequence[Sample], settings: Sequence[Setting]) -> list[list[tuple[Sample, Setting]]]:
    """The (sample, setting) work, per sample one group for each inversion its settings share
    (same backbone, same inversion_key; a baseline alone), in the order of first appearance: the unit
    a rank takes, run in one go."""
    groups = []
    for sample in samples:
        by_inversion: dict[tuple, list] = {}
        for setting in settings:
            key = ("baseline", setting.baseline) if setting.baseline else (setting.weights, setting.config.inversion)
            by_inversion.setdefault(key, []).append((sample, setting))
        groups += by_inversion.values()
    return groups


@dataclass
class RunCounts:
    edited: int = 0    # edits made in this run
    measured: int = 0  # samples scored in this run (edited now or found saved)
    reused: int = 0    # samples whose scores were already recorded
    failed: list[str] = field(default_factory=list)  # "sample [setting]: why", one per skipped sample

    @classmethod
    def total(cls, parts: Sequence["RunCounts"]) -> "RunCounts":
        return cls(sum(p.edited for p in parts), sum(p.measured for p in parts), sum(p.reused for p in parts),
                   [f for p in parts for f in p.failed])


SAMPLE_ERRORS = (DatasetError, RegionError, ImageError)  # a sample's data is at fault: skip it, go on


def evaluate(samples: Sequence[Sample], settings: Sequence[Setting], save_dir: PathLike, models: Models, *,
             progress: bool = True, shard: distributed.Shard = distributed.Shard()) -> tuple[ResultStore, RunCounts]:
    """Edit and score every sample under every setting (this shard's part of them), skipping what
    save_dir already holds. A sample whose data cannot be used is reported in one line and skipped."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(save_dir, settings, models.setup, write=shard.main)
    store = ResultStore(save_dir, f"results.rank{shard.rank}.jsonl" if shard.distributed else RESULTS_FILE)
    counts, edit = RunCounts(), Editor(models)
    work = [item for group in shard.take(work_groups(samples, settings)) for item in group]
    with tqdm(total=len(work), disable=not progress, desc="DragBench", unit="edit") as bar:
        for sample, setting in work:
            bar.set_postfix_str(f"{setting.name} {sample.key}", refresh=False)
            try:
                annotation = sample.annotation(setting.annotation)
                if SCORE_KEYS <= set(store.get(setting.name, annotation, sample.key)):
                    counts.reused += 1
                else:
                    path = edit_path(save_dir, setting, annotation, sample)
                    if not path.is_file():
                        image, timing = edit(sample, setting, annotation)
                        save_image_atomic(image, path)
                        store.add(setting.name, annotation, sample.key, **timing)
                        counts.edited += 1
                    store.add(setting.name, annotation, sample.key, **measure_sample(models.metrics, sample, path))
                    counts.measured += 1
            except SAMPLE_ERRORS as e:
                counts.failed.append(f"{sample.key} [{setting.name}]: {e}")
                tqdm.write(f"skipped {counts.failed[-1]}", file=sys.stderr)
            bar.update()
    return store, counts


@dataclass(frozen=True)
class Summary:
    setting: str
    subset: str
    annotation: str           # the annotation(s) its samples were edited with, e.g. "i4p"
    samples: int              # samples scored (a skipped one is not)
    md: Optional[float]       # RegionDrag's Mean Distance x100 (mean of per-sample means); None without samples
    lpips: Optional[float]    # mean LPIPS x100
    md_dragdiffusion: Optional[float]  # DragDiffusion's Mean Distance in pixels (mean over all points)
    dai: dict[int, Optional[float]]    # mean DAI per patch radius
    seconds: Optional[float]  # median seconds per edit (robust to the first edit's warm-up); None if unknown


def _mean(values: list[float], scale: float = 1.0) -> Optional[float]:
    return scale * statistics.fmean(values) if values else None


def md_score(key: str, records: Sequence[dict]) -> Optional[float]:
    """A benchmark's Mean Distance under MD_KEYS[key]'s protocol, x its scale: the mean of the per-sample
    means, or of all points of all samples when the protocol pools them."""
    protocol = MD_KEYS[key]
    values = [d for r in records for d in r[key]] if protocol.pooled else [r[key] for r in records]
    return _mean(values, protocol.scale)


def summarize(store: ResultStore, samples: Sequence[Sample], settings: Sequence[Setting]) -> list[Summary]:
    """Per setting and subset (in the samples' order): every score over the scored samples."""
    out = []
    for setting in settings:
        for subset in dict.fromkeys(s.subset for s in samples):
            mine = [(s, s.annotation(setting.annotation)) for s in samples if s.subset == subset]
            records = [r for r in (store.get(setting.name, a, s.key) for s, a in mine) if SCORE_KEYS <= set(r)]
            times = [r["edit_s"] for r in records if "edit_s" in r]
            used = {a for _, a in mine}
            out.append(Summary(setting.name, subset, "+".join(a for a in ANNOTATIONS if a in used), len(records),
                               md_score("md", records), _mean([r["lpips"] for r in records], METRIC_SCALE),
                               md_score("md_dragdiffusion", records),
                               {k: _mean([r["dai"][str(k)] for r in records]) for k in DAI_RADII},
                               statistics.median(times) if times else None))
    return out


# the scores' columns, each marked with its protocol and unit; DAI (~0.01 - 0.5) with 3 decimals
SCORE_HEADER = [REGIONDRAG.label, "LPIPS×100", DRAGDIFFUSION.label, *(f"DAI γ={r}" for r in DAI_RADII)]
SUMMARY_HEADER = ["benchmark", "annotation", "samples", *SCORE_HEADER, "s / edit"]
COLUMN_DIGITS = {f"DAI γ={r}": 3 for r in DAI_RADII}


def summary_row(s: Summary) -> list:
    return [SUBSET_TITLES[s.subset], s.annotation, s.samples, s.md, s.lpips, s.md_dragdiffusion,
            *(s.dai[r] for r in DAI_RADII), s.seconds]


def paper_table(summaries: Sequence[Summary]) -> str:
    """Ours beside the paper's RegionDrag row (measured with the region annotation and RegionDrag's
    protocol), one line per subset (and setting, when several)."""
    several = len({s.setting for s in summaries}) > 1
    header = (["setting"] if several else []) + SUMMARY_HEADER + ["paper MD×100", "paper LPIPS×100",
                                                                  "paper s / edit"]
    rows = [([s.setting] if several else []) + summary_row(s) + [*PAPER_SCORES[s.subset], PAPER_SECONDS_PER_EDIT]
            for s in summaries]
    return markdown_table(header, rows, column_digits=COLUMN_DIGITS)


def annotation_report(samples: Sequence[Sample], settings: Sequence[Setting]) -> str:
    """One line per annotation asked for: which kind each sample is edited with, e.g.
    "annotation auto: i4p for 305 samples"."""
    lines = []
    for requested in dict.fromkeys(s.annotation for s in settings):
        chosen = [s.annotation(requested) for s in samples]
        kinds = ", ".join(f"{k} for {chosen.count(k)} samples" for k in ANNOTATIONS if k in chosen)
        lines.append(f"annotation {requested}: {kinds}")
    return "\n".join(lines)


@dataclass
class Run:
    """A finished run as rank 0 (or the only process) sees it: every rank's results."""
    models: Models
    samples: list[Sample]
    settings: list[Setting]
    store: ResultStore
    counts: RunCounts

    @cached_property
    def summaries(self) -> list[Summary]:
        return summarize(self.store, self.samples, self.settings)


def write_results_json(path: PathLike, run: Run) -> Path:
    path = Path(path)
    _write_json_atomic(path, {
        "setup": run.models.setup, "settings": {s.name: s.as_json() for s in run.settings},
        "summary": [asdict(s) for s in run.summaries],
        "paper": {"scores_x100": PAPER_SCORES, "seconds_per_edit": PAPER_SECONDS_PER_EDIT,
                  "annotation": PAPER_ANNOTATION, "protocol": REGIONDRAG.name},
        "units": {"md": REGIONDRAG.label, "lpips": "LPIPS×100", "md_dragdiffusion": DRAGDIFFUSION.label,
                  "dai": "GoodDrag's DAI per patch radius, images in [0, 1]",
                  "samples": "raw per sample: md a fraction of the size, md_dragdiffusion per point in pixels"},
        "samples": [r for s in run.settings for sample in run.samples
                    if (r := run.store.get(s.name, sample.annotation(s.annotation), sample.key))],
        "failed": run.counts.failed})
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


def add_model_arguments(parser: argparse.ArgumentParser, default_save_dir: Optional[str],
                        save_dir_help: Optional[str] = None) -> None:
    """Everything a script that edits and scores needs, besides its settings; without a
    default_save_dir, --save-dir is None unless given (save_dir_help says what the script does then)."""
    from weights.ip_adapter import IP_ADAPTER_REPO

    add_data_arguments(parser)
    parser.add_argument("--weights", default=None, help="SD1.5 weights: diffusers folder, checkpoint or hub id")
    parser.add_argument("--ip-adapter", default=IP_ADAPTER_REPO,
                        help="IP-Adapter-Plus source, as the reference uses (default %(default)s; 'none': without)")
    parser.add_argument("--dift-weights", default=DIFT_MODEL, help="SD2.1 weights for DIFT (default %(default)s)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available; under torchrun "
                                                       "one GPU per process)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="default: fp16 on GPU (the reference's), fp32 on CPU")
    parser.add_argument("--save-dir", type=Path, default=default_save_dir and Path(default_save_dir),
                        help="edits and per-sample results; a rerun resumes from them "
                             f"(default {save_dir_help or default_save_dir})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--random-tiny", action="store_true", help=argparse.SUPPRESS)  # tests: tiny random models


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings a command line may give (`setting_overrides`); without them, the evaluation's."""
    parser.add_argument("--method", choices=(*METHODS, *BASELINES), default=None,
                        help=f"default {EVALUATION.method}; the baselines: identity (the photo unchanged), "
                             "copy_paste (the pixel copy-paste preview, no diffusion)")
    parser.add_argument("--annotation", choices=ANNOTATION_CHOICES, default=None,
                        help="which annotation each sample is edited with: region (meta_data_region.pkl, the "
                             "paper's), i4p (meta_data_i4p.pkl, as published today), points (meta_data.pkl's "
                             f"clicks); {AUTO} (default): the first a sample has, in that order")
    parser.add_argument("--point-radius", type=float, default=None,
                        help=f"--annotation points: the disk moved around each point, pixels "
                             f"(default {DEFAULT_POINT_RADIUS:g})")
    parser.add_argument("--max-side", type=int, default=None,
                        help="long side to edit at (default: each photo's own size, as the reference)")


def setting_overrides(args: argparse.Namespace) -> dict:
    """The setting arguments the command line gave, as Setting.replace's keywords."""
    given = {"method": args.method, "annotation": args.annotation, "point_radius": args.point_radius,
             "max_side": args.max_side}
    return {k: v for k, v in given.items() if v is not None}


def models_from_args(args: argparse.Namespace, device: Optional[str]) -> Models:
    if args.random_tiny:
        return random_tiny_models(device or "cpu")
    ip_adapter = None if args.ip_adapter.lower() == "none" else args.ip_adapter
    return pretrained_models(args.weights, ip_adapter, args.dift_weights, device, DTYPES.get(args.dtype))


def samples_from_args(args: argparse.Namespace, annotations: Sequence[str] = ()) -> list[Sample]:
    """The samples the data arguments select, each with the files of `annotations` (checked now)."""
    return find_samples(args.data, SUBSET_CHOICES[args.subset], args.limit, annotations)


def script_main(body: Callable[[], None]) -> int:
    """Run a script's body; an expected failure (data, settings, weights) prints one line, exit code 2."""
    import weights

    try:
        body()
    except (EvaluationError, DatasetError, RegionError, ImageError, weights.WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run_from_args(args: argparse.Namespace, settings: Sequence[Setting]) -> Optional[Run]:
    """The run the arguments describe, on this process's shard (under torchrun); rank 0 prints what
    every rank did and returns the merged run, the other ranks None."""
    shard, device = distributed.start(args.device)
    try:
        samples = samples_from_args(args, [s.annotation for s in settings])
        models = models_from_args(args, device)
        if shard.main:
            print(annotation_report(samples, settings))
        _, counts = evaluate(samples, settings, args.save_dir, models, progress=not args.quiet and shard.main,
                             shard=shard)
        counts = RunCounts.total(distributed.gather(shard, counts))
    finally:
        distributed.stop()
    if not shard.main:
        return None
    ranks = f" on {shard.world_size} ranks" if shard.distributed else ""
    print(f"{len(samples)} samples x {len(settings)} setting(s){ranks}: edited {counts.edited}, measured "
          f"{counts.measured}, reused {counts.reused}, skipped {len(counts.failed)} (results in {args.save_dir})")
    return Run(models, samples, list(settings), ResultStore(args.save_dir), counts)
