"""The benchmark (regiondrag/apps/benchmark.py) and the GPU check that runs it (scripts/gpu_check.py):
what is timed runs in inference mode on frozen models, the baseline with the image prompt is the same edit,
peak memory is each configuration's own, and the GPU check's rehearsal runs its whole sequence."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from models.onednn import packing_available
from models.unet import UNet
from regiondrag.apps import benchmark
from regiondrag.apps.baseline import DiffusersUNet
from regiondrag.pipeline import RegionDragPipeline

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--device", "cpu", "--size", "tiny", "--runs", "1", "--warmup", "0"]


def test_timed_calls_run_in_inference_mode_on_frozen_models(tmp_path, monkeypatch):
    """Every edit and every UNet call the benchmark times, ours and the baseline's (with the image prompt),
    runs under torch.inference_mode() with no parameter asking for gradients; the baseline is the same edit."""
    seen = []

    def spy(method):
        def wrapped(self, *args, **kwargs):
            module = self.unet if isinstance(self, RegionDragPipeline) else self
            seen.append((type(self).__name__, torch.is_inference_mode_enabled(),
                         any(p.requires_grad for p in module.parameters())))
            return method(self, *args, **kwargs)
        return wrapped

    for cls, name in ((RegionDragPipeline, "edit"), (UNet, "forward"), (DiffusersUNet, "forward")):
        monkeypatch.setattr(cls, name, spy(getattr(cls, name)))
    out = tmp_path / "bench.json"
    argv = [*QUICK, "--dtype", "fp32", "--ip-adapter", "--baseline", "diffusers", "--json", str(out)]
    assert benchmark.main(argv) == 0
    kinds = {kind for kind, _, _ in seen}
    assert kinds == {"RegionDragPipeline", "UNet", "DiffusersUNet"}
    assert all(inference and not grad for _, inference, grad in seen), [s for s in seen if not s[1] or s[2]]
    result = json.loads(out.read_text())
    ours, base = result["runs"]
    assert (ours["name"], base["name"]) == ("ours, float32", "diffusers, float32")
    # diffusers' IP-Adapter processors and image projection on the reference's 32 tokens: ours to float rounding
    assert base["max_pixel_diff_vs_ours"] <= 1
    assert result["ip_adapter"] and ours["peak_rss_bytes"] > 0
    assert "diffusers, float32 / ours, float32" in result["ratios"]


def test_without_dtype_ours_runs_in_the_default_dtype_and_float32(tmp_path, monkeypatch):
    """On a CPU with native bfloat16, the default configuration and float32, each beside diffusers in that dtype."""
    monkeypatch.setattr(benchmark, "default_dtype", lambda device: (torch.bfloat16, "native here"))
    out = tmp_path / "bench.json"
    assert benchmark.main([*QUICK, "--baseline", "diffusers", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["name"] for r in result["runs"]] == ["ours, bfloat16", "diffusers, bfloat16", "ours, float32",
                                                   "diffusers, float32"]
    assert set(result["ratios"]) == {f"diffusers, {b} / ours, {o}" for b in ("bfloat16", "float32")
                                     for o in ("bfloat16", "float32")}
    assert result["runs"][3]["max_pixel_diff_vs_ours"] == 0


def test_peak_memory_is_reset_between_configurations():
    """A freed 512 MiB buffer counts in the peak until the reset, and not after it."""
    benchmark.reset_peak_memory(torch.device("cpu"))
    before = benchmark.peak_memory(torch.device("cpu"))["peak_rss_bytes"]
    buffer = np.ones(2**29, np.uint8)  # written: resident
    del buffer
    high = benchmark.peak_memory(torch.device("cpu"))["peak_rss_bytes"]
    benchmark.reset_peak_memory(torch.device("cpu"))
    after = benchmark.peak_memory(torch.device("cpu"))
    assert high >= before + 2**29 * 0.9
    assert after["peak_rss_bytes"] < high - 2**29 * 0.9 and "reset" in after["counted"]


def test_gpu_check_dry_run_runs_the_whole_sequence(tmp_path):
    """scripts/gpu_check.py --dry-run: the GPU tests, then every benchmark configuration beside the baseline,
    compile times of the compiled ones (a second process's with the warm cache where asked), one table."""
    # (a budget far above its ~1.5 minutes, so that others' load on a shared CI machine skips no step)
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", str(tmp_path), "--dry-run", "--budget-s", "1200"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1300)
    assert proc.returncode == 0, proc.stdout[-3000:] + (tmp_path / "log.txt").read_text()[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "log.txt", "summary.md"]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["tests"]["status"] == "ok" and " passed" in (tmp_path / "log.txt").read_text()
    benches = results["benchmarks"]
    assert len(benches) == 6 and all(b["status"] == "ok" for b in benches.values())
    for name, b in benches.items():
        ours, base = b["runs"]
        assert base["max_pixel_diff_vs_ours"] <= ("IP" in name) and b["ip_adapter"] == ("IP" in name), name
        assert (ours["compile_first_edit_s"] is not None) == b["compile"] == name.startswith("compiled"), name
        assert ("compile_warm_start_s" in b) == ("CUDA graphs" in name), name
    assert "profile" in benches["compiled + CUDA graphs + IP"]
    table = (tmp_path / "summary.md").read_text()
    assert table in proc.stdout and table.count("\n| ") == 7  # the header and six configurations


def test_modules_are_timed_per_dtype_memory_format_and_thread_count(tmp_path):
    """--modules: the UNet and each VAE half in every dtype this CPU computes natively (float32, and bfloat16
    or float16 where it has them), contiguous and channels-last, in bfloat16 also with packed convolutions and then
    folded upsamplers; the UNet also with one thread fewer."""
    out = tmp_path / "modules.json"
    assert benchmark.main([*QUICK, "--modules", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    dtypes = {r["dtype"] for r in rows}
    assert "float32" in dtypes and all(r["s"] > 0 for r in rows)
    packed = {r["module"] for r in rows if r["format"] == "packed convs"}
    assert packed == ({"unet", "vae encode", "vae decode"} if "bfloat16" in dtypes and packing_available() else set())
    folded = {r["module"] for r in rows if r["format"] == "packed, folded"}
    assert folded == ({"unet", "vae decode"} if packed else set())  # the encoder has no upsampler
    for dtype in dtypes:
        for fmt in ("contiguous_format", "channels_last"):
            assert {r["module"] for r in rows if (r["dtype"], r["format"]) == (dtype, fmt)} == {
                "unet", "vae encode", "vae decode"}
    if torch.get_num_threads() > 1:
        assert {r["threads"] for r in rows if r["module"] == "unet"} == {torch.get_num_threads(),
                                                                         torch.get_num_threads() - 1}
