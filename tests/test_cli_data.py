"""`robopolicy data info|validate|render` on a small store, and their error messages."""

from __future__ import annotations

import json

import numpy as np
from conftest import make_episode

from robopolicy.cli.main import main
from robopolicy.data import EpisodeStore
from robopolicy.utils.video import read_mp4


def _store(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", fps=10)
    for i in range(3):
        store.add_episode(make_episode(12, seed=i, cameras=("front", "wrist")), {"task": "t", "success": i > 0})
    return store


def test_info_json(tmp_path, capsys):
    _store(tmp_path)
    assert main(["data", "info", str(tmp_path / "s.zarr"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 3 and info["frames"] == 36 and info["cameras"] == ["front", "wrist"]
    assert info["success"] == {"true": 2, "false": 1, "unlabelled": 0}
    assert info["keys"]["images/front"]["shape"] == [24, 32, 3]


def test_info_table_and_missing_store(tmp_path, capsys):
    _store(tmp_path)
    assert main(["data", "info", str(tmp_path / "s.zarr")]) == 0
    assert "episodes" in capsys.readouterr().out
    try:
        main(["data", "info", str(tmp_path / "missing.zarr")])
    except SystemExit as e:
        assert e.code == 1
    assert "no episode store" in capsys.readouterr().out


def test_validate_finds_nan_and_repairs_torn_tail(tmp_path, capsys):
    store = _store(tmp_path)
    assert main(["data", "validate", str(store.path), "--deep"]) == 0
    # Simulate data damaged on disk behind the store's back, and an interrupted write.
    arr = store.array("state")
    arr[5] = np.full(4, np.nan, np.float32)
    store.write_rows("action", store.n_frames, np.zeros((3, 2), np.float32))
    assert main(["data", "validate", str(store.path)]) == 1
    out = capsys.readouterr().out
    assert "'state' has NaN/inf at step 5" in out and "uncommitted rows" in out
    main(["data", "validate", str(store.path), "--repair"])
    assert EpisodeStore.open(store.path).array("action").shape[0] == 36


def test_render_writes_video_and_plot(tmp_path, capsys):
    store = _store(tmp_path)
    assert main(["data", "render", str(store.path), "--episode", "1", "--out", str(tmp_path / "r")]) == 0
    frames = read_mp4(tmp_path / "r/episode_1.mp4")
    assert frames.shape == (12, 24, 64, 3)  # two cameras side by side
    assert (tmp_path / "r/episode_1.png").stat().st_size > 10_000
    assert main(["data", "render", str(store.path), "--episode", "9", "--out", str(tmp_path / "r")]) == 1


def test_top_level_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    assert "data" in capsys.readouterr().out
    assert main(["fly"]) == 2
