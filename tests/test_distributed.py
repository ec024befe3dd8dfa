"""Data-parallel sweeps under torchrun on CPU (gloo, 2 processes on 127.0.0.1) with tiny random
models: a rank killed mid-run resumes its shard on restart without redoing finished work, and the
merged table is a single process's."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from regiondrag.dragbench import run as E
from regiondrag.dragbench.distributed import Shard
from synthetic_dragbench import write_synthetic_dragbench
from test_evaluation import ROOT, script, table_cells, tiny_args
from conftest import free_port

# 4 samples x 4 settings, two inversions per sample: 8 groups of work, 4 per rank
SWEEP = {"grid": {"start_t": [0.5, 0.3], "paste_schedule": ["every_step", "single_step"]}}
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    write_synthetic_dragbench(root / "data")
    (root / "sweep.json").write_text(json.dumps(SWEEP))
    return root


def torchrun(bench: Path, save: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), str(ROOT / "scripts" / "sweep.py"),
               "--config", str(bench / "sweep.json"), *tiny_args(bench / "data", save)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, out
    return out


def without_seconds(out: str) -> list[list[str]]:
    """The table's cells, less the s / edit column (timings differ between runs)."""
    return [row[:-1] for row in table_cells(out)]


@pytest.fixture(scope="module")
def single_process_table(bench, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what torchrun gives each rank
    try:
        save = tmp_path_factory.mktemp("single")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert script("sweep")(["--config", str(bench / "sweep.json"), *tiny_args(bench / "data", save)]) == 0
    finally:
        torch.set_num_threads(threads)
    return without_seconds(out.getvalue())


def test_shards_are_disjoint_and_cover_the_work():
    items = list(range(11))
    shares = [Shard(r, 3).take(items) for r in range(3)]
    assert sorted(sum(shares, [])) == items and shares[1] == [1, 4, 7, 10]


def rank_pid(parent: int, rank: int) -> int:
    """The pid of torchrun's worker of the given rank (a child process with RANK=rank)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    raise LookupError(f"no rank {rank} under {parent}")


def complete(save: Path) -> set:
    store = E.ResultStore(save)
    return {k for k, r in store.records.items() if {"md", "lpips"} <= set(r)}


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_two_ranks_resume_a_killed_rank_and_give_the_single_process_table(bench, tmp_path, single_process_table):
    """Rank 1 is killed mid-run (torchrun then ends rank 0 too); the restart redoes no finished
    edit, and the merged table is a single process's. One launch and its restart cover both."""
    save = tmp_path / "out"
    proc = torchrun(bench, save)
    rank1 = save / "results.rank1.jsonl"
    deadline = time.monotonic() + TIMEOUT_S
    while not (rank1.is_file() and '"md"' in rank1.read_text()):  # rank 1 has finished some, not all, work
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
        time.sleep(0.05)
    os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode != 0, out  # torchrun ended the group

    done = complete(save)
    assert 0 < len(done) < 16
    edits = {p: p.stat().st_mtime_ns for p in save.rglob(E.EDIT_FILE)}
    out = finish(torchrun(bench, save))
    assert "4 samples x 4 setting(s) on 2 ranks" in out
    assert f"reused {len(done)}, skipped 0" in out
    assert f"edited {16 - len(edits)}" in out  # an edit saved before the kill is measured, not redone
    assert all(p.stat().st_mtime_ns == t for p, t in edits.items())
    assert len(complete(save)) == 16
    assert without_seconds(out) == single_process_table
    # each rank wrote its own file, and over both starts the ranks did disjoint halves of the work
    ranks = [{(r["setting"], r["sample"]) for r in map(json.loads, (save / f"results.rank{i}.jsonl").open())
              if r.get("md") is not None} for i in range(2)]
    assert not ranks[0] & ranks[1] and len(ranks[0]) == len(ranks[1]) == 8
