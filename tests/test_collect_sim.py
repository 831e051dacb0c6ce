"""Demo collection: only successful expert episodes are written unless keep_failures, with the
store's conventions (time-major arrays, sim timestamps, episode attributes)."""

from __future__ import annotations

import numpy as np
import pytest
from test_eval_runner import TASK  # registers the point-mass test task and its expert

from robopolicy.data import EpisodeStore
from robopolicy.eval.demos import collect_demos


def test_collect_writes_only_successes(tmp_path):
    out = tmp_path / "demos.zarr"
    # The test expert gives up on seeds divisible by 4: attempts 0..4 give successes at 1, 2, 3, 5.
    result = collect_demos(TASK, n=4, out=out, seed=0, image_size=16, progress=False)
    assert result.n_success == 4 and result.n_attempts == 6 and result.failed_seeds == [0, 4]
    store = EpisodeStore.open(out)
    assert store.n_episodes == 4
    attrs = [store.episode_attrs(i) for i in range(4)]
    assert [a["seed"] for a in attrs] == [1, 2, 3, 5]
    assert all(a["success"] is True and a["source"] == "expert" and a["task"] == TASK for a in attrs)
    assert attrs[0]["language"] == "reach the goal"
    ep = store.get_episode(0)
    t = len(ep["action"])
    assert ep["state"].shape == (t, 7) and ep["state"].dtype == np.float32
    assert ep["images/top"].shape == (t, 16, 16, 3) and ep["images/top"].dtype == np.uint8
    assert np.allclose(ep["timestamp"], np.arange(t) / 10.0)
    # The stored actions are the ones that produced the next stored state (state[5:7] = last action).
    assert np.allclose(ep["state"][1:, 4:6], ep["action"][:-1], atol=1e-6)


def test_collect_keeps_failures_when_asked(tmp_path):
    out = tmp_path / "demos.zarr"
    result = collect_demos(TASK, n=2, out=out, seed=0, keep_failures=True, obs_mode="state", progress=False)
    store = EpisodeStore.open(out)
    assert result.n_written == 3 == store.n_episodes  # seed 0 fails, 1 and 2 succeed
    assert [store.episode_attrs(i)["success"] for i in range(3)] == [False, True, True]
    assert "images/top" not in store.keys
    with pytest.raises(FileExistsError, match="append=true"):
        collect_demos(TASK, n=1, out=out, progress=False)
    collect_demos(TASK, n=1, out=out, seed=10, append=True, obs_mode="state", progress=False)
    assert EpisodeStore.open(out).n_episodes == 4


def test_collect_cli(tmp_path, capsys):
    from robopolicy.cli.sim import main

    assert main(["--help"]) == 0 and "keep_failures" in capsys.readouterr().out
    out = tmp_path / "cli.zarr"
    assert main(["collect", f"task={TASK}", "n=2", "obs_mode=state", "progress=false", f"out={out}"]) == 0
    assert "expert success 2/3" in capsys.readouterr().out
    assert EpisodeStore.open(out).n_episodes == 2
    assert main(["list"]) == 0 and TASK in capsys.readouterr().out


def test_collect_bad_expert_argument_keeps_the_existing_store(tmp_path):
    out = tmp_path / "demos.zarr"
    collect_demos(TASK, n=1, out=out, seed=1, obs_mode="state", progress=False)
    with pytest.raises(ValueError, match="does not take"):
        collect_demos(TASK, n=1, out=out, seed=1, obs_mode="state", progress=False, overwrite=True,
                      expert_kwargs={"style": "plain"})
    assert EpisodeStore.open(out).n_episodes == 1  # overwrite=True did not wipe it before the error
