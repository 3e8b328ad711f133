"""A killed or interrupted collection keeps every finished episode; a rerun completes it into
exactly the dataset an uninterrupted run writes (whatever the number of envs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_helpers import NAV, PICK, SMALL, assert_same_episodes

from vla_gym.data import collect_demos, dataset_dir, load_demos
from vla_gym.data.layout import DatasetLockedError, episode_dirs
from vla_gym.data.writer import DemoWriter

SCRIPT = Path(__file__).with_name("collect_script.py")


def _start(env_id: str, episodes: int, out: Path, num_envs: int) -> subprocess.Popen:
    cmd = [sys.executable, str(SCRIPT), "--env", env_id, "--episodes", str(episodes),
           "--out", str(out), "--image-size", "32", "--num-envs", str(num_envs)]
    return subprocess.Popen(cmd, env={**os.environ, "MUJOCO_GL": "egl"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finished(folder: Path) -> set[int]:
    return set(episode_dirs(folder / "data")) | set(episode_dirs(folder / ".pending"))


def _signal_after(proc: subprocess.Popen, folder: Path, count: int, sig: int) -> set[int]:
    deadline = time.monotonic() + 120
    while len(_finished(folder)) < count:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "collection made no progress"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.output = proc.communicate(timeout=60)[0]  # kept for assertion messages
    return _finished(folder)


def test_sigkill_keeps_finished_episodes_and_rerun_completes(tmp_path):
    reference = tmp_path / "reference"
    collect_demos(NAV, 8, reference, env_kwargs=SMALL)  # one env, never interrupted
    out = tmp_path / "killed"
    proc = _start(NAV, 8, out, num_envs=2)
    survivors = _signal_after(proc, dataset_dir(out, NAV), 2, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert 2 <= len(survivors) < 8
    partial = load_demos(out)  # what Minari sees is readable: the contiguous prefix
    assert len(partial) == len(episode_dirs(dataset_dir(out, NAV) / "data"))
    rerun = collect_demos(NAV, 8, out, env_kwargs=SMALL)
    assert rerun.skipped == len(survivors) and rerun.recorded_now == 8 - len(survivors)
    assert episode_dirs(dataset_dir(out, NAV) / ".pending") == {}
    assert_same_episodes(load_demos(out), load_demos(reference))


def test_sigint_stops_cleanly_with_exit_130(tmp_path):
    proc = _start(PICK, 40, tmp_path, num_envs=1)
    survivors = _signal_after(proc, dataset_dir(tmp_path, PICK), 2, signal.SIGINT)
    assert proc.returncode == 130, proc.output
    demos = load_demos(tmp_path)
    assert len(demos) == len(survivors) >= 2  # one env: nothing waits out of order
    assert not list((dataset_dir(tmp_path, PICK) / ".pending").glob(".staging-*"))
    ep = demos.episode(len(demos) - 1)
    assert ep.terminations[-1] or ep.truncations[-1]


def _buffer(index: int, steps: int = 3):
    from minari.data_collector.episode_buffer import EpisodeBuffer

    rng = np.random.default_rng(index)
    return EpisodeBuffer(
        id=index, seed=index,
        observations={"image": rng.integers(0, 255, (steps + 1, 32, 32, 3), dtype=np.uint8),
                      "instruction": ["go"] * (steps + 1),
                      "state": rng.standard_normal((steps + 1, 2)).astype(np.float32)},
        actions=rng.uniform(-1, 1, (steps, 2)).astype(np.float32), rewards=[0.0] * steps,
        terminations=[False] * (steps - 1) + [True], truncations=[False] * steps,
        infos={"target": ["x"] * (steps + 1)})


def _spaces():
    from gymnasium import spaces

    obs = spaces.Dict({"image": spaces.Box(0, 255, (32, 32, 3), np.uint8),
                       "instruction": spaces.Text(8, charset="gox"),
                       "state": spaces.Box(-np.inf, np.inf, (2,), np.float32)})
    return obs, spaces.Box(-1, 1, (2,), np.float32)


def test_out_of_order_episodes_wait_complete_in_pending(tmp_path):
    params = {"env_id": "test/Fake-v0", "env_kwargs": {}, "seed": 0, "jpeg": False}
    writer = DemoWriter(tmp_path, params)
    writer.open(*_spaces(), env_spec=None, jpeg=False)
    writer.write(1, _buffer(1), {"success": True})
    assert writer.total_episodes == 0 and writer.recorded() == {1}
    with pytest.raises(DatasetLockedError, match="another collection"):
        DemoWriter(tmp_path, params).open(*_spaces(), env_spec=None, jpeg=False)
    writer.close()  # as after a kill: episode 1 is complete on disk, 0 is not
    resumed = DemoWriter(tmp_path, params)
    resumed.open(*_spaces(), env_spec=None, jpeg=False)
    assert resumed.recorded() == {1}
    resumed.write(0, _buffer(0), {"success": False})
    assert resumed.total_episodes == 2 and resumed.total_steps == 6
    resumed.close()
    demos = load_demos(tmp_path)
    np.testing.assert_array_equal(demos.episode(1).actions, _buffer(1).actions)
    assert demos.episode(0).metadata["success"] is False
