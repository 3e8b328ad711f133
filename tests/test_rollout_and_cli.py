"""Rollouts, vector envs, videos and the command line, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

import vla_gym
from vla_gym.cli import app
from vla_gym.rollout import run_rollouts, wilson_interval

runner = CliRunner()


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(95, 100)
    assert lo == pytest.approx(0.8883, abs=1e-3) and hi == pytest.approx(0.9785, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_env_batches_instruction_and_images(mode):
    envs = vla_gym.make_vec("vla_gym/TabletopMultiTask-v0", num_envs=2, vectorization_mode=mode)
    obs, info = envs.reset(seed=[0, 1])
    assert obs["image"].shape == (2, 96, 96, 3) and obs["image"].dtype == np.uint8
    assert len(obs["instruction"]) == 2 and all(isinstance(t, str) for t in obs["instruction"])
    assert obs["instruction"][0] != obs["instruction"][1]
    first = tuple(obs["instruction"])
    obs, reward, terminated, truncated, info = envs.step(np.zeros((2, 7), np.float32))
    assert reward.shape == (2,) and obs["state"].shape == (2, 21)
    obs, info = envs.reset(seed=[5, 6])
    assert tuple(obs["instruction"]) != first  # the batched instruction follows the episodes
    envs.close()


def test_rollout_figures_do_not_depend_on_num_envs():
    one = run_rollouts("vla_gym/TabletopPick-v0", "expert", episodes=4, seed=10,
                       env_kwargs={"obs_mode": "state"})
    two = run_rollouts("vla_gym/TabletopPick-v0", "expert", episodes=4, seed=10, num_envs=2,
                       vectorization_mode="async", env_kwargs={"obs_mode": "state"})
    assert one.episode_success == two.episode_success
    assert one.mean_length == two.mean_length
    assert one.success_rate >= 0.75


def test_random_rollouts_are_reproducible_and_fail():
    a = run_rollouts("vla_gym/TabletopPick-v0", "random", episodes=2, seed=3,
                     env_kwargs={"obs_mode": "state"})
    b = run_rollouts("vla_gym/TabletopPick-v0", "random", episodes=2, seed=3,
                     env_kwargs={"obs_mode": "state"})
    assert a.mean_return == b.mean_return and a.success_rate == 0.0
    assert a.mean_length == 100  # the pick time limit


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="policy must be one of"):
        run_rollouts("vla_gym/TabletopPick-v0", "teleop", episodes=1)


def test_cli_envs_lists_every_id_with_contract(tmp_path):
    out = tmp_path / "envs.json"
    result = runner.invoke(app, ["envs", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["envs"]
    ids = {row["id"] for row in rows}
    assert "vla_gym/TabletopMultiTask-v0" in ids and len(ids) >= 5
    pick = next(r for r in rows if r["id"] == "vla_gym/TabletopPick-v0")
    assert pick["action_dims"] == ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "grip"]


def test_cli_rollout_writes_json_and_video(tmp_path):
    video, summary = tmp_path / "r.mp4", tmp_path / "r.json"
    result = runner.invoke(app, [
        "rollout", "--env", "vla_gym/TabletopPick-v0", "--policy", "expert", "--episodes", "2",
        "--seed", "0", "--video", str(video), "--json", str(summary)])
    assert result.exit_code == 0, result.output
    data = json.loads(summary.read_text())
    assert data["episodes"] == 2 and 0.0 <= data["success_ci95"][0] <= data["success_rate"]
    assert data["steps_per_second"] > 0 and data["mean_length"] > 0
    frames = iio.imread(video)
    assert frames.ndim == 4 and frames.shape[0] >= 20 and frames.shape[-1] == 3
    # The caption band under the 224 px frame holds white text.
    assert frames.shape[1] > 224 and frames[:, 224:].max() > 200


def test_cli_rollout_rejects_unknown_env():
    result = runner.invoke(app, ["rollout", "--env", "vla_gym/Nope-v0"])
    assert result.exit_code != 0 and "valid" in result.output


def test_cli_doctor_reports_renderer_and_fps(tmp_path):
    out = tmp_path / "doctor.json"
    result = runner.invoke(app, ["doctor", "--json", str(out), "--frames", "20"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["ok"] and report["frames_per_second_96px"] > 10 and report["renderer"]


def test_cli_doctor_exits_nonzero_when_rendering_is_broken(tmp_path):
    # A backend MuJoCo does not know: rendering cannot start, whatever the machine has.
    env = {**os.environ, "MUJOCO_GL": "no-such-backend"}
    proc = subprocess.run([sys.executable, "-m", "vla_gym.cli", "doctor", "--frames", "10"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ok: False" in proc.stdout and "error" in proc.stdout


def test_cli_rollout_nav_expert_with_vector_envs_and_video(tmp_path):
    video, summary = tmp_path / "nav.mp4", tmp_path / "nav.json"
    result = runner.invoke(app, [
        "rollout", "--env", "vla_gym/NavGoTo-v0", "--policy", "expert", "--episodes", "3",
        "--seed", "0", "--num-envs", "2", "--video", str(video), "--json", str(summary)])
    assert result.exit_code == 0, result.output
    data = json.loads(summary.read_text())
    assert data["episodes"] == 3 and data["success_rate"] == 1.0
    frames = iio.imread(video)
    assert frames.shape[1] > 256 and frames.shape[-1] == 3
