"""Download the DragBench-SR/DR benchmark (the Hugging Face dataset LuJingyi/DragBench), check it, and
say what to run next:

    python -m regiondrag.dragbench.fetch [DIR]     into DIR (default drag_data); unpacks a zip
"""
from __future__ import annotations

import argparse
import os
import shutil
import zipfile
from pathlib import Path
from typing import Optional, Sequence

from huggingface_hub import snapshot_download

from weights.errors import WeightsError, WeightsNotFoundError
from weights.hub import offline

from .reader import ANNOTATIONS, SUBSET_TITLES, DatasetError, check_release, find_release

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
    root = find_release(folder)
    if root is None:
        where = f"into {folder}"
        if offline():
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
    samples = check_release(root)
    subsets = ", ".join(f"{t} {sum(s.subset == k for s in samples)}" for k, t in SUBSET_TITLES.items())
    has = [a for s in samples for a in s.annotations()]
    annotations = ", ".join(f"{k} in {has.count(k)}" for k in ANNOTATIONS if k in has)
    print(f"DragBench in {root}: {subsets} samples; annotations: {annotations}")
    print(f"next: python scripts/evaluate.py --data {root}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m regiondrag.dragbench.fetch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", metavar="DIR", nargs="?", type=Path, default=Path(DRAGBENCH_DIR),
                        help=f"where to put it (default {DRAGBENCH_DIR})")
    args = parser.parse_args(argv)
    try:
        print(f"fetching DragBench ({DRAGBENCH_REPO}) into {args.folder}")
        report_dragbench(fetch_dragbench(args.folder))
    except (WeightsError, DatasetError) as e:
        parser.exit(1, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
