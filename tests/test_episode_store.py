"""EpisodeStore: schema, validation, atomic appends, corruption handling."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import make_episode

from robopolicy.data import EpisodeStore, EpisodeValidationError, StoreFormatError


def test_round_trip_values_and_attrs(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", fps=10)
    eps = [make_episode(15 + i, seed=i, depth=True) for i in range(3)]
    for i, ep in enumerate(eps):
        store.add_episode(ep, {"task": "t", "language": f"do {i}", "success": i != 1, "source": "expert"})
    again = EpisodeStore.open(tmp_path / "s.zarr")
    assert again.n_episodes == 3 and again.n_frames == 15 + 16 + 17
    assert list(again.episode_lengths) == [15, 16, 17]
    for i, ep in enumerate(eps):
        got = again.get_episode(i)
        for k, v in ep.items():
            np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype
        attrs = again.episode_attrs(i)
        assert attrs["language"] == f"do {i}" and attrs["success"] == (i != 1) and attrs["source"] == "expert"
    assert again.schema.cameras == ["front"] and again.schema.depth_cameras == ["front"]
    assert again.fps == 10


def test_images_chunked_one_frame_and_compressed(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", fps=10)
    ep = make_episode(8)
    ep["images/front"][:] = 7  # compressible
    store.add_episode(ep)
    arr = store.array("images/front")
    assert arr.chunks == (1, 24, 32, 3)
    size = sum(p.stat().st_size for p in (tmp_path / "s.zarr/data/images/front").rglob("*") if p.is_file())
    assert size < ep["images/front"].nbytes / 5


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda e: e.pop("action"), "missing ['action']"),
        (lambda e: e.__setitem__("extra", np.zeros((20, 1), np.float32)), "unexpected ['extra']"),
        (lambda e: e.__setitem__("state", e["state"].astype(np.float64)), "dtype float64"),
        (lambda e: e.__setitem__("state", e["state"][:, :3]), "per-step shape (3,)"),
        (lambda e: e["action"].__setitem__((5, 1), np.nan), "NaN or inf at step 5"),
        (lambda e: e["state"].__setitem__((7, 0), np.inf), "NaN or inf at step 7"),
        (lambda e: e["timestamp"].__setitem__(9, e["timestamp"][8]), "not strictly increasing at step 9"),
        (lambda e: e.__setitem__("action", e["action"][:-1]), "has 19 steps"),
    ],
)
def test_validation_errors_write_nothing(tmp_path, mutate, message):
    store = EpisodeStore.create(tmp_path / "s.zarr", fps=10)
    store.add_episode(make_episode(20))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()}
    bad = make_episode(20, seed=1)
    mutate(bad)
    with pytest.raises(EpisodeValidationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        store.add_episode(bad)
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()}
    assert before == after
    assert EpisodeStore.open(tmp_path / "s.zarr").n_episodes == 1


def test_schema_rules_for_first_episode(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", fps=10)
    ep = make_episode(5)
    ep["images/front"] = ep["images/front"].astype(np.float32)
    with pytest.raises(EpisodeValidationError, match="must have dtype uint8"):
        store.add_episode(ep)
    ep = make_episode(5)
    del ep["timestamp"]
    with pytest.raises(EpisodeValidationError, match="needs a 'timestamp'"):
        store.add_episode(ep)
    with pytest.raises(EpisodeValidationError, match="source"):
        store.add_episode(make_episode(5), {"source": "dreamed"})


def test_recorder_streams_and_discard_keeps_store(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", fps=30)
    store.add_episode(make_episode(10, seed=0))
    ep = make_episode(40, seed=1)
    with store.recorder({"task": "rec"}, flush_every=4) as rec:
        for t in range(40):
            rec.add_step({k: v[t] for k, v in ep.items()})
        idx = rec.save(success=True)
    assert idx == 1
    np.testing.assert_array_equal(store.get_episode(1)["images/front"], ep["images/front"])
    with store.recorder({"task": "dropped"}) as rec:
        for t in range(20):
            rec.add_step({k: v[t] for k, v in make_episode(20, seed=2).items()})
    # leaving the block without save() discards
    reopened = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    assert reopened.n_episodes == 2
    assert all(reopened.array(k).shape[0] == 50 for k in reopened.keys)
    with pytest.raises(EpisodeValidationError, match="step 1: .*timestamp"):
        with reopened.recorder() as rec:
            step = {k: v[0] for k, v in make_episode(2).items()}
            rec.add_step(step)
            rec.add_step(step)


def test_recorder_on_exit_save_marks_aborted(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", fps=30)
    ep = make_episode(6)
    with pytest.raises(KeyboardInterrupt):
        with store.recorder({"task": "x"}, on_exit="save") as rec:
            for t in range(6):
                rec.add_step({k: v[t] for k, v in ep.items()})
            raise KeyboardInterrupt
    assert store.n_episodes == 1 and store.episode_attrs(0)["aborted"] is True


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import make_episode
    from robopolicy.data import EpisodeStore
    store = EpisodeStore.create({path!r}, fps=30)
    for i in range(3):
        store.add_episode(make_episode(30, seed=i, image_hw=(120, 160)), {{"task": "ok"}})
    print("COMMITTED", flush=True)
    ep = make_episode(200, seed=99, image_hw=(120, 160))
    if {streaming}:
        rec = store.recorder({{"task": "torn"}}, flush_every=2)
        for t in range(100000):
            rec.add_step({{k: v[t % 200] if k != "timestamp" else 5000.0 + t for k, v in ep.items()}})
            if t == 50:
                print("RECORDING", flush=True)
    else:
        print("RECORDING", flush=True)
        i = 3
        while True:
            store.add_episode(make_episode(200, seed=i, image_hw=(120, 160)), {{"task": "ok"}})
            i += 1
    """
)


@pytest.mark.parametrize("streaming", [True, False])
def test_sigkill_mid_episode_leaves_readable_store(tmp_path, streaming):
    path = tmp_path / "s.zarr"
    code = _WRITER.format(tests=str(Path(__file__).parent), path=str(path), streaming=streaming)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "COMMITTED"
        assert proc.stdout.readline().strip() == "RECORDING"
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = EpisodeStore.open(path, mode="r")
    assert store.n_episodes >= 3
    for i in range(store.n_episodes):
        ep = store.get_episode(i)
        expected = make_episode(30 if i < 3 else 200, seed=i, image_hw=(120, 160))
        for k in expected:
            np.testing.assert_array_equal(ep[k], expected[k])
    n = store.n_episodes
    torn = any(store.array(k).shape[0] > store.n_frames for k in store.keys)
    if streaming:
        assert torn, "the killed recorder should have left uncommitted frames behind"
    repaired = EpisodeStore.open(path, mode="a")
    assert repaired.n_episodes == n
    assert all(repaired.array(k).shape[0] == repaired.n_frames for k in repaired.keys)
    assert not list(path.rglob("*.partial"))
    repaired.add_episode(make_episode(30, seed=7, image_hw=(120, 160)))
    assert EpisodeStore.open(path).n_episodes == n + 1


def test_corrupt_and_foreign_stores_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no episode store"):
        EpisodeStore.open(tmp_path / "nothing.zarr")
    foreign = zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w", zarr_format=3)
    foreign.create_array("data/action", shape=(3, 2), dtype="float32")
    with pytest.raises(StoreFormatError, match="not an EpisodeStore"):
        EpisodeStore.open(tmp_path / "foreign.zarr")
    v2 = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
    v2.attrs["x"] = 1
    with pytest.raises(StoreFormatError, match="zarr v2"):
        EpisodeStore.open(tmp_path / "v2.zarr")

    store = EpisodeStore.create(tmp_path / "s.zarr", fps=10)
    store.add_episode(make_episode(10))
    meta = tmp_path / "s.zarr/zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["version"] = 99
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError, match="version 99"):
        EpisodeStore.open(tmp_path / "s.zarr")
    doc["attributes"]["version"] = 1
    meta.write_text(json.dumps(doc))
    import shutil

    shutil.rmtree(tmp_path / "s.zarr/data/state")
    with pytest.raises(StoreFormatError, match="data/state is missing"):
        EpisodeStore.open(tmp_path / "s.zarr")

    store = EpisodeStore.create(tmp_path / "t.zarr", fps=10)
    store.add_episode(make_episode(10))
    store.array("action").resize((4, 2))  # data lost after commit
    with pytest.raises(StoreFormatError, match="has 4 rows but the episodes end at 10"):
        EpisodeStore.open(tmp_path / "t.zarr")
    (tmp_path / "u.zarr").mkdir()
    (tmp_path / "u.zarr/zarr.json").write_text("{not json")
    with pytest.raises(StoreFormatError, match="cannot read zarr metadata"):
        EpisodeStore.open(tmp_path / "u.zarr")


def test_read_only_and_overwrite_guards(tmp_path):
    EpisodeStore.create(tmp_path / "s.zarr", fps=10).add_episode(make_episode(5))
    with pytest.raises(FileExistsError):
        EpisodeStore.create(tmp_path / "s.zarr", fps=10)
    with pytest.raises(PermissionError, match="read-only"):
        EpisodeStore.open(tmp_path / "s.zarr").add_episode(make_episode(5))
    store = EpisodeStore.open(tmp_path / "s.zarr", mode="a")
    store.set_episode_attrs(0, success=True)
    assert EpisodeStore.open(tmp_path / "s.zarr").episode_attrs(0)["success"] is True
    with pytest.raises(IndexError, match="out of range"):
        store.get_episode(3)


def test_discard_then_record_again_keeps_store_consistent(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", fps=10)
    for action in ("save", "discard", "save"):
        rec = store.recorder({"task": action})
        for step in _steps(make_episode(5, seed=len(action))):
            rec.add_step(step)
        rec.save() if action == "save" else rec.discard()
    reopened = EpisodeStore.open(tmp_path / "s.zarr")
    assert reopened.n_episodes == 2 and reopened.n_frames == 10
    np.testing.assert_array_equal(reopened.get_episode(1)["images/front"], make_episode(5, seed=4)["images/front"])


def _steps(ep):
    n = len(ep["timestamp"])
    return [{k: v[t] for k, v in ep.items()} for t in range(n)]
