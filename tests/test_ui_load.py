"""The browser editor as a server several people use: 16 clients at once for about two minutes.

The server is `python -m regiondrag ui` in its own process (tiny random-weight model, 128 px
working size, on 127.0.0.1), so its memory is its own. Each of 16 client threads (gradio_client)
repeats sessions: a new session, its own photo, a pair added, previews redrawn, another pair,
undo, two Drags, then its tab closed (the page's heartbeat opened and dropped, as a browser
does). Every Drag's result is compared with the library's edit of that client's photo and pairs,
computed here beforehand: a client given another's photo or pairs (cross-talk) would get
another's result. At the end the queue must be empty, no request may have failed, and the
server's peak RSS after the first few sessions must stay within RSS_GROWTH_BOUND of its RSS then.
It prints requests served, the preview redraws' p50/p95 latency and the peak RSS.
"""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from regiondrag.attention_swap import AttentionSwap
from regiondrag.pipeline import RegionDragPipeline
from regiondrag.regions import PointPairs
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 16
DURATION_S = 120             # new sessions start until then; the ones running finish
WARM_SESSIONS = 2 * CLIENTS  # the RSS baseline: after this many sessions have ended
RSS_GROWTH_BOUND = 256 * 2**20
PHOTO_SIZE = (192, 128)      # working size 128 x 80 at MAX_SIDE: latent 16 x 10
MAX_SIDE = 128
# prompt, steps, start_t, handle noise, seed, method, image-prompt scale, paste schedule, attention swap
SETTINGS = ("", 10, 0.5, 1.0, 42, "encode_then_cp", 0.5, "every_step", True)
NO_MASK = {"background": None, "layers": [], "composite": None, "id": None}


def photo_of(client: int) -> np.ndarray:
    """A photo no other client has: colour blobs and texture from the client's own seed."""
    rng = np.random.default_rng(1000 + client)
    w, h = PHOTO_SIZE
    coarse = Image.fromarray(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((w, h), Image.BICUBIC), np.int16)
    return np.clip(smooth + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def pair_of(client: int, variant: int) -> tuple[str, str]:
    """The (handle, target) text of one of a client's two point pairs; no two clients share one."""
    handle = (20 + 6 * client, 40 + 40 * variant)
    target = (handle[0] + 24 + (client % 4) * 8, handle[1] + 16 - 8 * variant)
    return f"{handle[0]},{handle[1]}", f"{target[0]},{target[1]}"


def as_pair(text: tuple[str, str]) -> PointPairs:
    handle, target = ([[float(c) for c in t.split(",")]] for t in text)
    return PointPairs(handle, target, 20.0, "disk")


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = self.sessions = 0
        self.failures, self.mismatches, self.preview_s, self.drag_s = [], [], [], []

    def call(self, client: Client, *args, api_name: str, timings=None):
        start = time.perf_counter()
        try:
            out = client.predict(*args, api_name=api_name)
        except Exception as e:  # noqa: BLE001 - every failure is counted, and the test then fails
            with self.lock:
                self.failures.append(f"{api_name}: {type(e).__name__}: {e}")
            raise
        with self.lock:
            self.requests += 1
            if timings is not None:
                timings.append(time.perf_counter() - start)
        return out


def run_client(index: int, url: str, photo: Path, expected: dict, stats: Stats, stop_at: float) -> None:
    pairs = [pair_of(index, 0), pair_of(index, 1)]
    while time.monotonic() < stop_at:
        client = Client(url, verbose=False)
        try:
            stats.call(client, handle_file(str(photo)), api_name="/load_photo")
            for variant, (handle, target) in enumerate(pairs):
                stats.call(client, "Triangle (3 vertices, affine)", handle, target, 20, "disk", api_name="/preview",
                           timings=stats.preview_s)
                stats.call(client, handle, target, 20, "disk", api_name="/add_points")
                stats.call(client, "Triangle (3 vertices, affine)", "", "", 20, "disk", api_name="/preview",
                           timings=stats.preview_s)
                _, result, _ = stats.call(client, NO_MASK, *SETTINGS, api_name="/drag", timings=stats.drag_s)
                got = np.asarray(Image.open(result).convert("RGB"), np.int16)
                if not np.array_equal(got, expected[index, variant]):
                    closest = min(expected, key=lambda k: np.abs(expected[k] - got).mean())
                    with stats.lock:
                        stats.mismatches.append(f"client {index} drag {variant}: closest to {closest}, mean "
                                                f"difference {np.abs(expected[index, variant] - got).mean():.3f}")
                if variant == 0:
                    stats.call(client, api_name="/undo_pair")  # the second Drag: the second pair alone
        except Exception:  # noqa: BLE001 - counted by Stats.call; the next session starts afresh
            pass
        finally:
            close_tab(url, client, stats)


def close_tab(url: str, client: Client, stats: Stats) -> None:
    """The page's heartbeat opened, then dropped: what closing a browser tab does."""
    try:
        with httpx.stream("GET", f"{url}gradio_api/heartbeat/{client.session_hash}", timeout=60) as beat:
            next(beat.iter_lines())
    except httpx.HTTPError as e:
        with stats.lock:
            stats.failures.append(f"heartbeat: {type(e).__name__}: {e}")
    client.close()
    with stats.lock:
        stats.sessions += 1


@pytest.mark.slow
def test_sixteen_clients_for_two_minutes(tiny_sd_folder, tmp_path, capsys):
    photos, expected = [], {}
    pipe = RegionDragPipeline.from_pretrained(str(tiny_sd_folder), device="cpu", dtype=torch.float32)
    prompt, steps, start_t, noise, seed, method, ip_scale, schedule, swap = SETTINGS
    for i in range(CLIENTS):
        photos.append(tmp_path / f"photo{i}.png")
        Image.fromarray(photo_of(i)).save(photos[-1])
        for variant in range(2):  # what each Drag should give: the library's edit of that client's input
            expected[i, variant] = np.asarray(pipe.edit(
                Image.open(photos[-1]), [as_pair(pair_of(i, variant))], prompt, None, steps=steps, start_t=start_t,
                noise_scale=noise, seed=seed, method=method, ip_scale=ip_scale, paste_schedule=schedule,
                attention_swap=AttentionSwap(enabled=swap), max_side=MAX_SIDE, progress=False).image, np.int16)
    del pipe
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "regiondrag", "ui", "--weights", str(tiny_sd_folder),
                               "--device", "cpu", "--dtype", "fp32", "--max-side", str(MAX_SIDE), "--port", str(port)],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.5)

        stats, samples, done = Stats(), [], threading.Event()

        def sample_rss():  # (sessions ended so far, RSS) twice a second
            while not done.is_set():
                samples.append((stats.sessions, rss(server.pid)))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        stop_at = time.monotonic() + DURATION_S
        workers = [threading.Thread(target=run_client, args=(i, url, photos[i], expected, stats, stop_at))
                   for i in range(CLIENTS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=DURATION_S + 600)
        done.set()
        sampler.join()
        queue = httpx.get(f"{url}gradio_api/queue/status", timeout=10).json()
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()

    assert not any(w.is_alive() for w in workers), "a client hung"
    warm = [r for n, r in samples if n >= WARM_SESSIONS]
    assert warm, f"only {stats.sessions} sessions ended in {DURATION_S} s; the RSS baseline needs {WARM_SESSIONS}"
    baseline, peak = warm[0], max(warm)
    preview_ms = np.percentile(stats.preview_s, [50, 95]) * 1000
    with capsys.disabled():
        print(f"\n{CLIENTS} clients, {DURATION_S} s: {stats.requests} requests served, {stats.sessions} sessions, "
              f"{len(stats.drag_s)} drags (p50 {np.percentile(stats.drag_s, 50):.2f} s), preview redraws p50 "
              f"{preview_ms[0]:.0f} ms p95 {preview_ms[1]:.0f} ms; server RSS after {WARM_SESSIONS} sessions "
              f"{baseline / 2**20:.0f} MiB, peak after that {peak / 2**20:.0f} MiB, at the end "
              f"{samples[-1][1] / 2**20:.0f} MiB (a 2-core machine shared with other work)")
    assert stats.failures == [], stats.failures[:5]
    assert stats.mismatches == [], stats.mismatches[:5]
    assert queue["queue_size"] == 0, queue
    assert peak - baseline <= RSS_GROWTH_BOUND, (baseline, peak)
