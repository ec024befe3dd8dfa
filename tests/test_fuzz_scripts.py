"""Bad input to the scripts: one line and exit 2, never a traceback or a silent drop."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, argv, fragment", [
    ("scripts/benchmark.py", ["--runs", "0"], "--runs must be at least 1"),
    ("scripts/benchmark.py", ["--warmup", "-1"], "--warmup at least 0"),
    ("scripts/evaluate.py", ["--data", ".", "--limit", "-1"], "argument --limit: must be at least 1, got -1"),
    ("scripts/evaluate.py", ["--data", ".", "--limit", "0"], "argument --limit: must be at least 1, got 0"),
])
def test_script_counts_are_checked(capsys, script, argv, fragment):
    spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    assert fragment in err.splitlines()[-1], err


def test_alexnet_is_not_fetched_when_offline(tmp_path, monkeypatch):
    import urllib.request

    import weights
    from weights.lpips import fetch_alexnet

    def no_network(*args, **kwargs):
        raise AssertionError("fetched over the network although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights.WeightsError, match="HF_HUB_OFFLINE is set"):
        fetch_alexnet(tmp_path / "alexnet.pth")
    assert list(tmp_path.iterdir()) == []
