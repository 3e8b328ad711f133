"""Demos and training of the map-and-plan navigation policy, and its CLI."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

import vla_gym  # noqa: E402,F401
from vla_gym.cli import app  # noqa: E402
from vla_gym.policies.map_planner import MapPlannerPolicy  # noqa: E402
from vla_gym.training.map_planner import (  # noqa: E402
    MapDemos,
    MapPlannerTraining,
    config_for,
    perception_labels,
    perception_loss,
    train_map_planner,
)

NAV = "vla_gym/NavGoTo-v0"
runner = CliRunner()


@pytest.fixture(scope="module")
def demos() -> MapDemos:
    return MapDemos.from_expert(NAV, 2, seed=0, grounding_scenes=4)


def test_demos_hold_what_perception_learns_from(demos):
    demo_rows = demos.demo_rows
    assert 0 < len(demo_rows) < len(demos)  # grounding frames carry no action
    assert np.isnan(demos.actions[len(demo_rows):]).all()
    assert demos.images.shape[1:] == (96, 96, 3) and demos.images.dtype == np.uint8
    assert demos.blocked.shape[0] == demos.episode.max() + 1
    assert demos.blocked.shape[1:] == (50, 50)
    env = gym.make(NAV, cameras=("main", "top"))
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(demos.images[0], obs["top_image"])
    np.testing.assert_allclose(demos.poses[0], info["robot_pose"], atol=1e-6)
    np.testing.assert_allclose(demos.targets[0], info["target_pos_world"][:2], atol=1e-6)
    np.testing.assert_array_equal(demos.blocked[0], env.unwrapped.grid.blocked)
    env.close()
    # each grounding scene's first frame comes once per landmark, each time instructed to it
    grounding = np.arange(len(demo_rows), len(demos))
    for scene in np.unique(demos.episode[grounding]):
        rows = grounding[demos.episode[grounding] == scene]
        assert len(rows) >= 2
        assert len({tuple(demos.targets[r]) for r in rows}) == len(rows)
        assert len({demos.instructions[r] for r in rows}) == len(rows)
        assert all((demos.images[r] == demos.images[rows[0]]).all() for r in rows)


def test_demos_refuse_envs_without_the_overhead_map():
    with pytest.raises(ValueError, match="navigation env with the overhead camera"):
        MapDemos.from_expert("vla_gym/TabletopPick-v0", 1)
    with pytest.raises(ValueError, match="episodes >= 1"):
        MapDemos.from_expert(NAV, 0)


def test_perception_learns_the_maps(demos):
    """Every map's loss falls on a fixed batch: the labels and the net agree on geometry."""
    torch.manual_seed(0)
    config = config_for(demos, channels=12)
    policy = MapPlannerPolicy(config)
    labels = perception_labels(demos, config)
    rows = np.random.default_rng(0).choice(len(demos), 8, replace=False)
    optimiser = torch.optim.Adam(policy.perception.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    first = None
    for _ in range(100):
        loss, parts = perception_loss(policy, demos, labels, rows, rng, brightness=0.0,
                                      blocked_weight=3.0)
        first = first or parts
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    for key in ("base", "nose", "target"):
        assert parts[key] < 0.3 * first[key], (key, first[key], parts[key])
    assert parts["blocked"] < 0.8 * first["blocked"], (first["blocked"], parts["blocked"])


@pytest.mark.parametrize("head_features", ["true", "perceived"])
def test_training_budget_is_checked_and_spent(demos, head_features):
    with pytest.raises(ValueError, match="must exceed head_seconds"):
        train_map_planner(demos, MapPlannerTraining(time_budget=5, head_seconds=5))
    with pytest.raises(ValueError, match="head_features must be one of"):
        train_map_planner(demos, MapPlannerTraining(head_features="oracle"))
    policy, figures = train_map_planner(
        demos, MapPlannerTraining(time_budget=4, head_seconds=2, head_steps=20,
                                  head_features=head_features),
        config=config_for(demos, channels=8))
    assert figures["perception_steps"] >= 1
    assert figures["demo_frames"] == len(demos.demo_rows)
    assert np.isfinite(figures["head_loss"])
    # the head's normalisation comes from the demos' actions
    head_rows = demos.demo_rows[::MapPlannerTraining().head_frame_stride]
    assert figures["head_frames"] == len(head_rows)
    np.testing.assert_allclose(policy.action_mean.numpy(), demos.actions[head_rows].mean(0),
                               atol=1e-5)


def test_cli_trains_and_evaluates_a_map_planner(tmp_path):
    bad = runner.invoke(app, ["train", "map-planner", "--out", str(tmp_path / "x"),
                              "--env", "vla_gym/TabletopPick-v0", "--demos", "1"])
    assert bad.exit_code == 2 and "overhead camera" in bad.output
    budget = runner.invoke(app, ["train", "map-planner", "--out", str(tmp_path / "x"),
                                 "--time-budget", "5", "--head-seconds", "10"])
    assert budget.exit_code == 2 and "--time-budget" in budget.output
    features = runner.invoke(app, ["train", "map-planner", "--out", str(tmp_path / "x"),
                                   "--head-features", "oracle"])
    assert features.exit_code == 2 and "head_features must be one of" in features.output
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "map-planner", "--out", str(run), "--demos", "1",
                                 "--grounding-scenes", "2", "--time-budget", "6",
                                 "--head-seconds", "3", "--head-steps", "20"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["demos"] == 1 and metrics["perception_steps"] >= 1
    report = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "--policy", str(run), "--env", NAV, "--episodes", "1",
                                 "--json", str(report)])
    assert result.exit_code == 0, result.output
    figures = json.loads(report.read_text())
    assert figures["episodes"] == 1 and 0.0 <= figures["success_rate"] <= 1.0
