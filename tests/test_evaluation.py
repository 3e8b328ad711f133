"""vla-gym eval: reproducible figures, counterfactual test, clips, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from vla_gym.cli import app
from vla_gym.evaluation import evaluate, resolve_policy_dir
from vla_gym.rollout import mean_jerk


@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory):
    from vla_gym.policies import VLAPolicy, get_config

    policy = VLAPolicy(get_config("nav-small", seed=3))
    return policy.save_pretrained(tmp_path_factory.mktemp("ckpt") / "policy")


def test_mean_jerk_of_known_sequences():
    assert mean_jerk(np.zeros((5, 2))) == 0.0
    ramp = np.arange(6, dtype=float)[:, None]  # constant velocity: no jerk
    assert mean_jerk(ramp) == 0.0
    assert mean_jerk([[0.0], [1.0], [0.0]]) == 2.0
    assert np.isnan(mean_jerk([[0.0], [1.0]]))


def test_eval_is_reproducible_and_reports_every_figure(saved_policy, tmp_path):
    kwargs = dict(episodes=3, seed=50, num_envs=2, counterfactual_episodes=2,
                  env_kwargs={"num_rooms": (1, 1), "max_episode_steps": 60})
    first = evaluate(saved_policy.parent, "vla_gym/NavGoTo-v0", video_dir=tmp_path, **kwargs)
    second = evaluate(saved_policy, "vla_gym/NavGoTo-v0", **kwargs)
    keys = ("success_rate", "success_ci95", "mean_length", "mean_jerk", "mean_final_distance",
            "mean_return", "per_task")
    assert {k: first[k] for k in keys} == {k: second[k] for k in keys}
    assert first["mean_final_distance"] > 0 and first["mean_jerk"] >= 0
    assert first["counterfactual"]["episodes"] == 2
    clips = first["videos"]["success"] + first["videos"]["failure"]
    assert clips and all(path.endswith(".mp4") for path in clips)


def test_counterfactual_episodes_name_another_object():
    import gymnasium as gym

    from vla_gym.evaluation import CounterfactualTargets

    env = CounterfactualTargets(gym.make("vla_gym/TabletopPick-v0", obs_mode="state"))
    obs, info = env.reset(seed=4)
    assert info["target"] != info["counterfactual_of"]
    again, info2 = env.reset(seed=4)
    assert info2["target"] == info["target"] and again["instruction"] == obs["instruction"]
    env.close()


def test_resolve_policy_dir_errors_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no policy checkpoint"):
        resolve_policy_dir(tmp_path)


def test_cli_eval_writes_json(saved_policy, tmp_path):
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, [
        "eval", "--policy", str(saved_policy), "--env", "vla_gym/NavGoTo-v0", "--episodes", "2",
        "--counterfactual", "0", "--num-envs", "1", "--max-steps", "60", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["episodes"] == 2 and "counterfactual" not in data
