"""Download weights into the weights cache, or the DragBench-SR/DR benchmark:

    python -m weights.fetch [MODEL_ID] [--variant fp16]     SD weights (default: SD1.5)
    python -m weights.fetch --ip-adapter h94/IP-Adapter    IP-Adapter-Plus and its CLIP image encoder
    python -m weights.fetch --dragbench [DIR]              DragBench-SR/DR (Hugging Face dataset
                                                           LuJingyi/DragBench) into DIR (default drag_data)
"""
from __future__ import annotations

import argparse
import os
import shutil
import zipfile
from pathlib import Path
from typing import Optional, Sequence

from huggingface_hub import snapshot_download

from .errors import WeightsError, WeightsNotFoundError
from .hub import COMPONENTS, DEFAULT_MODEL, _offline, cache_dir, download, model_components
from .ip_adapter import IP_ADAPTER_FILES, IP_ADAPTER_REPO, fetch_ip_adapter

DRAGBENCH_REPO = "LuJingyi/DragBench"  # the benchmark as published today (also a Google Drive zip)
DRAGBENCH_DIR = "drag_data"  # where the reference's scripts expect it
UNPACKING = ".unpacking"  # an archive is unpacked here first, then moved into place


def _unpack_archives(folder: Path) -> None:
    """Unpack every .zip the snapshot holds into `folder`, each first into a scratch folder, so an
    interrupted unpack leaves no half tree where the layout is looked for."""
    archives = sorted(p for p in folder.rglob("*.zip") if not any(part.startswith(".") for part in
                                                                   p.relative_to(folder).parts))
    for archive in archives:
        scratch = folder / UNPACKING
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(scratch)  # zipfile drops absolute paths and ".." from member names
        except (zipfile.BadZipFile, OSError) as e:
            raise WeightsError(f"cannot unpack {archive}: {e}; delete it and fetch again") from None
        for entry in scratch.iterdir():
            if entry.name != "__MACOSX" and not (folder / entry.name).exists():
                os.replace(entry, folder / entry.name)
        shutil.rmtree(scratch)


def fetch_dragbench(folder: Path) -> Path:
    """DragBench-SR/DR in `folder`: the copy already there, else the hub dataset's snapshot
    (unpacked if it is an archive). Returns the folder holding dragbench-sr/ and dragbench-dr/,
    checked to be the whole release; a WeightsError or DatasetError says what went wrong."""
    from regiondrag.dragbench.reader import DatasetError, find_release

    root = find_release(folder)
    if root is None:
        where = f"into {folder}"
        if _offline():
            raise WeightsNotFoundError(f"cannot fetch DragBench ({DRAGBENCH_REPO}) {where}: the hub is offline "
                                       "(HF_HUB_OFFLINE); fetch it where there is internet and copy the folder here")
        try:
            snapshot_download(DRAGBENCH_REPO, repo_type="dataset", local_dir=folder)
        except Exception as e:  # noqa: BLE001 - network, auth and not-found errors all end here
            reason = (str(e).strip().splitlines() or [""])[0]
            raise WeightsNotFoundError(f"cannot fetch DragBench ({DRAGBENCH_REPO}) {where}: "
                                       f"{type(e).__name__}: {reason}") from None
        _unpack_archives(folder)
        root = find_release(folder)
        if root is None:
            raise DatasetError(f"{DRAGBENCH_REPO} as fetched into {folder} holds no dragbench-sr/ and dragbench-dr/ "
                               "folders (nor a .zip of them); has the dataset's layout changed?")
    return root


def report_dragbench(root: Path) -> None:
    """Check the release in `root` and print what it holds and the evaluation command."""
    from regiondrag.dragbench.reader import ANNOTATIONS, SUBSET_TITLES, check_release

    samples = check_release(root)
    subsets = ", ".join(f"{t} {sum(s.subset == k for s in samples)}" for k, t in SUBSET_TITLES.items())
    has = [a for s in samples for a in s.annotations()]
    annotations = ", ".join(f"{k} in {has.count(k)}" for k in ANNOTATIONS if k in has)
    print(f"DragBench in {root}: {subsets} samples; annotations: {annotations}")
    print(f"next: python scripts/evaluate.py --data {root}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from regiondrag.dragbench.reader import DatasetError

    parser = argparse.ArgumentParser(prog="python -m weights.fetch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_id", nargs="?", help=f"hub model id of SD weights (default {DEFAULT_MODEL}, "
                                                    f"unless only --ip-adapter or --dragbench is given)")
    parser.add_argument("--variant", help='weights variant, e.g. "fp16" (half the download)')
    parser.add_argument("--components", nargs="+", choices=COMPONENTS,
                        help="default: all an edit needs (SDXL ids: text_encoder_2 and tokenizer_2 too)")
    parser.add_argument("--ip-adapter", metavar="REPO",
                        help=f"also fetch IP-Adapter-Plus from REPO, laid out like {IP_ADAPTER_REPO} (~2.5 GB)")
    parser.add_argument("--ip-backbone", choices=IP_ADAPTER_FILES, default="sd15",
                        help="which backbone's IP-Adapter-Plus to fetch (default %(default)s)")
    parser.add_argument("--dragbench", metavar="DIR", nargs="?", const=Path(DRAGBENCH_DIR), type=Path,
                        help=f"fetch DragBench-SR/DR ({DRAGBENCH_REPO}) into DIR (default {DRAGBENCH_DIR})")
    args = parser.parse_args(argv)
    model_id = args.model_id or (None if args.ip_adapter or args.dragbench else DEFAULT_MODEL)
    try:
        if model_id:
            components = args.components or model_components(model_id)
            print(f"fetching {model_id} ({', '.join(components)}) into {cache_dir()}")
            print(download(model_id, components, args.variant))
        if args.ip_adapter:
            print(f"fetching {args.ip_adapter} ({IP_ADAPTER_FILES[args.ip_backbone]} and the image encoder) "
                  f"into {cache_dir()}")
            print(fetch_ip_adapter(args.ip_adapter, args.ip_backbone))
        if args.dragbench:
            print(f"fetching DragBench ({DRAGBENCH_REPO}) into {args.dragbench}")
            report_dragbench(fetch_dragbench(args.dragbench))
    except (WeightsError, DatasetError) as e:
        parser.exit(1, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
