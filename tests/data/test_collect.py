"""Collected datasets open with Minari and hold exactly what the env and its expert produced."""

from __future__ import annotations

import gymnasium as gym
import minari
import numpy as np
import pytest
from data_helpers import PICK, SMALL

from vla_gym.data import check_compatible, collect_demos, dataset_id, load_demos
from vla_gym.experts import ExpertActions


def test_minari_load_dataset_opens_it(pick_root, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(pick_root))
    assert dataset_id(PICK) == "vla_gym/TabletopPick/expert-v0"
    assert dataset_id(PICK) in minari.list_local_datasets()
    ds = minari.load_dataset(dataset_id(PICK))
    env = gym.make(PICK, **SMALL)
    assert ds.total_episodes == 3
    assert ds.observation_space["image"] == env.observation_space["image"]
    assert ds.observation_space["state"] == env.observation_space["state"]
    assert ds.action_space == env.action_space
    text = ds.observation_space["instruction"]
    assert text.character_set == env.observation_space["instruction"].character_set
    env.close()


def test_episodes_replay_exactly_with_the_expert(pick_root):
    """Episode j is reset(seed=5+j); its images, instruction, states and actions are what the
    env and the expert give on replay; success and metadata agree."""
    demos = load_demos(pick_root)
    env = ExpertActions(gym.make(PICK, **SMALL))
    for ep in demos.episodes():
        obs, info = env.reset(seed=5 + ep.index)
        assert ep.seed == 5 + ep.index
        assert ep.instruction == obs["instruction"]
        assert set(ep.observations["instruction"]) == {obs["instruction"]}
        np.testing.assert_array_equal(ep.observations["image"][0], obs["image"])
        for t, action in enumerate(ep.actions):
            np.testing.assert_array_equal(action, np.float32(info["expert_action"]))
            obs, reward, terminated, truncated, info = env.step(action)
            np.testing.assert_array_equal(ep.observations["state"][t + 1], obs["state"])
            np.testing.assert_array_equal(ep.infos["target_pos"][t + 1], info["target_pos"])
            assert ep.rewards[t] == pytest.approx(reward)
        assert terminated or truncated
        assert ep.success == info["is_success"] and ep.infos["is_success"][-1] == ep.success
        assert ep.metadata["task"] == info["task"] == "pick"
        assert ep.metadata["target"] == info["target"] == ep.infos["target"][0]
        assert ep.metadata["length"] == len(ep)
    env.close()
    assert sum(m["success"] for m in demos.episode_metadata()) >= 2


def test_recover_environment_gives_the_same_env(pick_root):
    demos = load_demos(pick_root)
    env = demos.minari.recover_environment()
    assert env.spec.id == PICK and env.spec.kwargs == {"tasks": "pick", **SMALL}
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    env.step(env.action_space.sample())
    check_compatible(demos, env)  # no error
    env.close()


def test_load_demos_streams_numpy_transitions(pick_root):
    demos = load_demos(pick_root)
    assert demos.env_id == PICK and demos.env_kwargs == SMALL and len(demos) == 3
    assert demos.action_space.shape == (7,)
    steps = 0
    for tr in demos.transitions():
        steps += 1
        assert tr.observation["image"].dtype == np.uint8
        assert tr.observation["image"].shape == (32, 32, 3)
        assert isinstance(tr.observation["instruction"], str)
        assert tr.observation["state"].dtype == np.float32
        assert tr.action.shape == (7,) and tr.action.dtype == np.float32
        assert tr.info["target_pos"].shape == (3,)
        assert isinstance(tr.info["target"], str) and tr.info["target"]
        assert tr.info["task"] == "pick"
    assert steps == demos.total_steps
    only = list(demos.episodes(only_success=True))
    assert all(ep.success for ep in only)


def test_rerun_skips_recorded_episodes_and_extends(pick_root, tmp_path):
    again = collect_demos(PICK, 3, pick_root, seed=5, env_kwargs=SMALL)
    assert again.recorded_now == 0 and again.skipped == 3
    assert again.bytes_per_frame < 32 * 32 * 3  # compressed below raw pixels
    one = collect_demos(PICK, 1, tmp_path, seed=5, env_kwargs=SMALL)
    two = collect_demos(PICK, 2, tmp_path, seed=5, env_kwargs=SMALL)
    assert (one.recorded_now, two.recorded_now, two.skipped) == (1, 1, 1)
    first = load_demos(pick_root).episode(1)
    np.testing.assert_array_equal(load_demos(tmp_path).episode(1).actions, first.actions)


def test_collect_into_a_relative_path(tmp_path, monkeypatch):
    """``--out runs/demos`` as the README writes it: relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    result = collect_demos(PICK, 2, "runs/demos", seed=5, env_kwargs=SMALL)
    assert result.recorded_now == 2
    assert len(load_demos("runs/demos").episode(1).actions) > 0
    assert (tmp_path / "runs/demos" / dataset_id(PICK) / "data").is_dir()


def test_jpeg_images_are_smaller_and_close(tmp_path):
    exact = collect_demos(PICK, 1, tmp_path / "exact", seed=5, env_kwargs=SMALL)
    lossy = collect_demos(PICK, 1, tmp_path / "jpeg", seed=5, jpeg=True, env_kwargs=SMALL)
    assert lossy.bytes_per_frame < exact.bytes_per_frame
    a = load_demos(tmp_path / "exact").episode(0).observations["image"].astype(int)
    b = load_demos(tmp_path / "jpeg").episode(0).observations["image"].astype(int)
    assert a.shape == b.shape and np.abs(a - b).mean() < 8
