"""The reward model learns the oracle's preferences and predicts from raw observations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from rlhf_helpers import PICK, synthetic_segments, tiny_reward_config
from typer.testing import CliRunner

from vla_gym.cli import app
from vla_gym.training.label_store import LabelStore
from vla_gym.training.preferences import (
    Oracle,
    load_preferences,
    random_pairs,
    read_query_set,
    write_query_set,
)
from vla_gym.training.reward_model import (
    RewardEnsemble,
    bradley_terry_loss,
    split_pairs,
    train_reward_model,
)


@pytest.fixture(scope="module")
def labelled(pick_segments, tmp_path_factory):
    """120 oracle-labelled pairs of expert segments, as a query directory + label database."""
    root = tmp_path_factory.mktemp("prefs")
    pairs = random_pairs(pick_segments, 120, np.random.default_rng(0))
    write_query_set(root / "q", pick_segments, pairs, tag="t")
    with LabelStore(root / "labels.sqlite") as store:
        Oracle().label(read_query_set(root / "q"), store)
    return root / "q", root / "labels.sqlite"


@pytest.fixture(scope="module")
def trained(labelled):
    return train_reward_model(load_preferences([labelled]), tiny_reward_config())


def test_reward_model_learns_oracle_preferences(trained):
    metrics = trained.metrics
    assert metrics["held_out_pairs"] == 30 and metrics["train_pairs"] == 90
    assert metrics["held_out_accuracy"] >= 0.75, metrics  # chance is 0.5
    assert metrics["true_return_correlation"] > 0.4, metrics
    assert len(metrics["member_accuracy"]) == 2


def test_predict_scores_raw_observations_and_survives_a_round_trip(trained, pick_segments,
                                                                    tmp_path):
    model = trained.model
    obs = pick_segments.batch(np.array([0, 1]))
    rewards = model.predict(obs)
    assert rewards.shape == (40,) and np.isfinite(rewards).all()
    loaded = RewardEnsemble.load(model.save(tmp_path / "rm"))
    np.testing.assert_allclose(loaded.predict(obs), rewards, atol=1e-5)
    with pytest.raises(ValueError, match="no reward model"):
        RewardEnsemble.load(tmp_path / "missing")


def test_bradley_terry_loss_and_holdout_split():
    zero = torch.zeros(2)
    assert math.isclose(bradley_terry_loss(zero, zero, torch.full((2,), 0.5)).item(),
                        math.log(2), rel_tol=1e-6)
    confident = bradley_terry_loss(torch.tensor([9.0]), torch.tensor([0.0]), torch.ones(1))
    assert confident.item() < 1e-3
    train, held = split_pairs(10, 0.2, np.random.default_rng(0))
    assert len(held) == 2 and sorted(np.concatenate([train, held]).tolist()) == list(range(10))
    assert len(split_pairs(4, 0.2, np.random.default_rng(0))[1]) == 0


def test_train_reward_cli_writes_the_model_and_refuses_another_envs_queries(labelled,
                                                                           tmp_path):
    queries, db = labelled
    runner = CliRunner()
    result = runner.invoke(app, ["train", "reward", "--queries", str(queries), "--db", str(db),
                                 "--out", str(tmp_path / "run"), "--env", PICK,
                                 "--members", "1", "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output
    assert (tmp_path / "run" / "reward_model" / "model.safetensors").is_file()
    result = runner.invoke(app, ["train", "reward", "--queries", str(queries), "--db", str(db),
                                 "--out", str(tmp_path / "run2"),
                                 "--env", "vla_gym/TabletopPush-v0"])
    assert result.exit_code == 2
    assert "TabletopPick-v0" in result.output and "TabletopPush-v0" in result.output


def test_train_reward_cli_fits_a_state_only_model_and_refuses_unknown_inputs(labelled,
                                                                             tmp_path):
    queries, db = labelled
    runner = CliRunner()
    base = ["train", "reward", "--queries", str(queries), "--db", str(db), "--members", "1",
            "--steps", "3"]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "run"), "--inputs", "state"])
    assert result.exit_code == 0, result.output
    model = RewardEnsemble.load(tmp_path / "run" / "reward_model")
    assert model.config.inputs == "state" and model.member(0).trunk is None
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "run2"), "--inputs", "pixels"])
    assert result.exit_code == 2
    assert "inputs" in result.output and "'state'" in result.output
    assert not (tmp_path / "run2").exists()


def test_unlabelled_queries_are_refused_clearly(tmp_path):
    segments = synthetic_segments(n=6)
    write_query_set(tmp_path / "q", segments, random_pairs(segments, 2,
                                                           np.random.default_rng(0)))
    with pytest.raises(ValueError, match="none of the queries .* has a label"):
        load_preferences([(tmp_path / "q", tmp_path / "labels.sqlite")])


def test_training_on_a_subset_of_each_segments_steps_runs(tmp_path):
    from vla_gym.training.preferences import Preferences

    segments = synthetic_segments(n=8, length=6)
    prefs = Preferences(segments, np.arange(4), np.arange(4, 8), np.zeros(4, np.float32))
    result = train_reward_model(prefs, tiny_reward_config(steps=3, frames_per_segment=2))
    assert math.isfinite(result.metrics["final_train_loss"])


def test_a_state_only_reward_model_learns_from_the_state_alone(labelled, pick_segments,
                                                               tmp_path):
    result = train_reward_model(load_preferences([labelled]),
                                tiny_reward_config(inputs="state", steps=400))
    assert result.metrics["held_out_accuracy"] >= 0.75, result.metrics
    model = result.model
    obs = pick_segments.batch(np.array([0, 1]))
    rewards = model.predict(obs)
    # images and instruction are not read: other pixels and words, the same rewards
    blank = {**obs, "image": np.zeros_like(obs["image"]),
             "instruction": ["pick up the green ball"] * len(rewards)}
    np.testing.assert_array_equal(model.predict(blank), rewards)
    loaded = RewardEnsemble.load(model.save(tmp_path / "rm"))
    np.testing.assert_allclose(loaded.predict(obs), rewards, atol=1e-6)
    with pytest.raises(ValueError, match=r"inputs must be one of \('all', 'state'\)"):
        tiny_reward_config(inputs="image")
