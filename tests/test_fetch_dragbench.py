"""`python -m regiondrag.dragbench.fetch` against local fakes of the Hugging Face dataset (never the
network): the dataset as a file tree and as one zip, an incomplete copy, offline and failing hubs."""
import shutil
import zipfile
from pathlib import Path

import pytest
from huggingface_hub import constants

from regiondrag.dragbench.reader import RELEASE_SAMPLES, find_samples
from synthetic_dragbench import PUBLISHED, write_synthetic_dragbench
from regiondrag.dragbench import fetch


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A whole release (100 SR, 205 DR samples) in the layout published today: drag_data/dragbench-*/."""
    root = tmp_path_factory.mktemp("release") / "drag_data"
    write_synthetic_dragbench(root, size=16, annotations=PUBLISHED, counts=RELEASE_SAMPLES)
    return root


def fake_hub(monkeypatch, repo: Path) -> list:
    """snapshot_download answering for LuJingyi/DragBench with the files of `repo`, copied into
    local_dir as huggingface_hub does (its bookkeeping folder included); returns the calls made."""
    calls = []

    def snapshot_download(repo_id, *, repo_type=None, local_dir=None, **kwargs):
        calls.append((repo_id, repo_type))
        if (repo_id, repo_type) != (fetch.DRAGBENCH_REPO, "dataset"):
            raise ValueError(f"404: no {repo_type} {repo_id}")
        shutil.copytree(repo, local_dir, dirs_exist_ok=True)
        (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True, exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(fetch, "snapshot_download", snapshot_download)
    online(monkeypatch)
    return calls


def online(monkeypatch) -> None:
    """The hub counts as reachable, whatever HF_HUB_OFFLINE this test session started with."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def check_fetched(capsys, dest: Path, root: Path) -> None:
    assert fetch.main([str(dest)]) == 0
    out = capsys.readouterr().out
    assert f"DragBench in {root}: DragBench-SR 100, DragBench-DR 205 samples; annotations: i4p in 305, " \
           "points in 305" in out
    assert out.rstrip().endswith(f"next: python scripts/evaluate.py --data {root}")
    assert len(find_samples(root)) == 305


def test_fetch_a_file_tree(release, tmp_path, monkeypatch, capsys):
    hub = tmp_path / "hub"
    shutil.copytree(release, hub)  # the dataset repo holds dragbench-sr/ and dragbench-dr/ at its top
    (hub / "README.md").write_text("dataset card")
    calls = fake_hub(monkeypatch, hub)
    dest = tmp_path / "data"
    check_fetched(capsys, dest, dest)
    assert calls == [(fetch.DRAGBENCH_REPO, "dataset")]
    check_fetched(capsys, dest, dest)  # already there: checked, not fetched again
    assert len(calls) == 1


def test_fetch_one_zip_and_unpack_it(release, tmp_path, monkeypatch, capsys):
    hub = tmp_path / "hub"
    hub.mkdir()
    with zipfile.ZipFile(hub / "drag_data.zip", "w") as z:  # as the Google Drive archive: drag_data/dragbench-*/
        for path in sorted(release.rglob("*")):
            z.write(path, Path("drag_data") / path.relative_to(release))
        z.writestr("__MACOSX/._drag_data", "resource fork")
    fake_hub(monkeypatch, hub)
    dest = tmp_path / "data"
    check_fetched(capsys, dest, dest / "drag_data")
    assert not (dest / fetch.UNPACKING).exists() and not (dest / "__MACOSX").exists()


def test_an_incomplete_copy_is_refused(release, tmp_path, monkeypatch, capsys):
    hub = tmp_path / "hub"
    shutil.copytree(release, hub)
    shutil.rmtree(next((hub / "dragbench-dr" / "animals").iterdir()))
    fake_hub(monkeypatch, hub)
    with pytest.raises(SystemExit) as exit:
        fetch.main([str(tmp_path / "data")])
    assert exit.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "dragbench-dr holds 204 samples, the release has 205" in err


def test_a_snapshot_without_the_layout_is_named(tmp_path, monkeypatch, capsys):
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "README.md").write_text("moved elsewhere")
    fake_hub(monkeypatch, hub)
    with pytest.raises(SystemExit):
        fetch.main([str(tmp_path / "data")])
    assert "holds no dragbench-sr/ and dragbench-dr/ folders" in capsys.readouterr().err


def test_offline_is_one_clear_line(tmp_path, monkeypatch, capsys):
    calls = fake_hub(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit:
        fetch.main([str(tmp_path / "data")])
    assert exit.value.code == 1 and calls == []
    assert capsys.readouterr().err == (f"error: cannot fetch DragBench (LuJingyi/DragBench) into {tmp_path / 'data'}: "
                                       "the hub is offline (HF_HUB_OFFLINE); fetch it where there is internet and "
                                       "copy the folder here\n")


def test_a_failing_hub_is_one_line(tmp_path, monkeypatch, capsys):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Max retries exceeded with url: /api/datasets/LuJingyi/DragBench\n(caused by ...)")

    monkeypatch.setattr(fetch, "snapshot_download", unreachable)
    online(monkeypatch)
    with pytest.raises(SystemExit):
        fetch.main([str(tmp_path / "data")])
    assert capsys.readouterr().err == (f"error: cannot fetch DragBench (LuJingyi/DragBench) into {tmp_path / 'data'}: "
                                       "ConnectionError: Max retries exceeded with url: "
                                       "/api/datasets/LuJingyi/DragBench\n")
