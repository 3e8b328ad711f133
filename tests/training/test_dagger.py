"""DAgger: the policy drives, the expert labels; rounds join the demos, survive resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from vla_gym.training.bc import BCConfig, BCTrainer
from vla_gym.training.demos import LEARNER_SEEDS, Demos, learner_episodes

PICK = "vla_gym/TabletopPick-v0"


class _StandStill:
    """A learner that never moves: whatever the expert says, the arm stays where it is."""

    def __init__(self) -> None:
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def act(self, obs):
        return np.zeros(7, np.float32)


@pytest.fixture(scope="module")
def pick_demos():
    return Demos.from_expert(PICK, 2, seed=0, image_size=48)


def _config(**changes):
    base = dict(steps=30, batch_size=8, eval_every=0, eval_episodes=1, eval_num_envs=1,
                checkpoint_every=1000, log_every=5, warmup_steps=5)
    return BCConfig(**{**base, **changes})


def test_the_learner_drives_and_the_expert_labels():
    actor = _StandStill()
    demos, successes = learner_episodes(PICK, actor, 2, seed=3, image_size=48)
    assert actor.resets == 2 and successes == [False, False]
    # two full-length episodes (the stand-still arm never succeeds) of the actor's states
    assert demos.num_episodes == 2 and len(demos) == 200
    ee = demos.states[:, 13:16]
    assert np.abs(ee - ee[0]).max() < 0.01  # the arm stayed put: the actor's actions ran
    # ...while every label is the expert's, heading for the object
    assert np.abs(demos.actions[:, :3]).max() > 0.5
    assert (demos.actions[:, 6] == -1.0).all()  # the expert never got to close the gripper
    first_label = demos.actions[0]
    import gymnasium as gym

    from vla_gym.experts import make_expert

    env = gym.make(PICK, image_size=48)
    obs, _ = env.reset(seed=3)
    np.testing.assert_allclose(make_expert(env).act(obs), first_label, atol=1e-6)
    env.close()
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        learner_episodes(PICK, actor, 0)


def test_demos_save_and_load_round_trip(pick_demos, tmp_path):
    wrist = Demos.from_expert(PICK, 1, seed=1, image_size=32, cameras=("main", "wrist"))
    for demos in (pick_demos, wrist):
        path = demos.save(tmp_path / f"{len(demos)}.npz")
        back = Demos.load(path)
        assert (back.env_id, back.env_kwargs, back.contract) == (
            demos.env_id, demos.env_kwargs, demos.contract)
        for name in ("images", "instructions", "states", "actions", "episode", "targets",
                     "target_pos", "target_pixel"):
            np.testing.assert_array_equal(getattr(back, name), getattr(demos, name))
        assert set(back.views) == set(demos.views)
        for key, images in demos.views.items():
            np.testing.assert_array_equal(back.views[key], images)
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="not demos written by Demos.save"):
        Demos.load(tmp_path / "bad.npz")


def test_with_episodes_appends_and_refuses_another_env(pick_demos):
    more = Demos.from_expert(PICK, 1, seed=5, image_size=48)
    joined = pick_demos.with_episodes(more)
    assert len(joined) == len(pick_demos) + len(more) and joined.num_episodes == 3
    np.testing.assert_array_equal(joined.actions[len(pick_demos):], more.actions)
    listed = dataclasses.replace(more, env_kwargs={"image_size": 48, "cameras": ["main"]})
    tupled = dataclasses.replace(pick_demos, env_kwargs={"image_size": 48, "cameras": ("main",)})
    assert tupled.with_episodes(listed).num_episodes == 3  # as JSON and as code spell them
    other = Demos.from_expert(PICK, 1, seed=5, image_size=32)
    with pytest.raises(ValueError, match="cannot add episodes"):
        pick_demos.with_episodes(other)


def test_with_episodes_keeps_both_sides_grounding_frames():
    first = Demos.from_expert(PICK, 1, seed=0, image_size=32, other_targets=True)
    second = Demos.from_expert(PICK, 1, seed=1, image_size=32, other_targets=True)
    plain = Demos.from_expert(PICK, 1, seed=2, image_size=32)
    assert first.grounding_frames is not None and second.grounding_frames is not None
    both = first.with_episodes(second).grounding_frames
    assert len(both) == len(first.grounding_frames) + len(second.grounding_frames)
    np.testing.assert_array_equal(both.images[len(first.grounding_frames):],
                                  second.grounding_frames.images)
    assert first.with_episodes(plain).grounding_frames is first.grounding_frames
    assert plain.with_episodes(second).grounding_frames is second.grounding_frames
    assert plain.with_episodes(plain).grounding_frames is None


def test_dagger_rounds_join_the_demos_and_survive_resume(pick_demos, tmp_path):
    trainer = BCTrainer(pick_demos, tmp_path, _config(dagger_episodes=3, dagger_rounds=2))
    result = trainer.run()
    assert trainer.dagger_rounds_done == 2 and result.dagger_seconds > 0
    # rounds at 1/3 and 2/3 of the steps; 3 episodes split 1 then 2, from LEARNER_SEEDS on
    assert trainer.history["dagger_step"] == [10, 20]
    assert trainer._round_episodes(1) == (LEARNER_SEEDS, 1)
    assert trainer._round_episodes(2) == (LEARNER_SEEDS + 1, 2)
    assert trainer.demos.num_episodes == pick_demos.num_episodes + 3
    saved = [Demos.load(tmp_path / "dagger" / f"round_{r}.npz") for r in (1, 2)]
    assert [d.num_episodes for d in saved] == [1, 2]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dagger"]["rounds"] == 2 and summary["transitions"] == len(trainer.demos)
    assert len(summary["dagger"]["learner_success"]) == 2

    resumed = BCTrainer(pick_demos, tmp_path, _config(dagger_episodes=3, dagger_rounds=2),
                        resume=True)
    assert resumed.dagger_rounds_done == 2 and len(resumed.demos) == len(trainer.demos)
    np.testing.assert_array_equal(resumed.demos.actions, trainer.demos.actions)
    assert not resumed._dagger_due()  # no round collected twice


def test_time_budget_does_not_count_dagger_rollouts(pick_demos, tmp_path, monkeypatch):
    import vla_gym.training.bc as bc

    real = bc.learner_episodes

    def slow(*args, **kwargs):
        import time

        time.sleep(1.5)  # longer than the whole training budget
        return real(*args, **kwargs)

    monkeypatch.setattr(bc, "learner_episodes", slow)
    trainer = BCTrainer(pick_demos, tmp_path,
                        _config(steps=100_000, time_budget_s=1.0, dagger_episodes=1))
    result = trainer.run()
    assert trainer.dagger_rounds_done == 1 and result.dagger_seconds >= 1.5
    assert result.train_seconds < 1.5 + 0.5  # the budget, plus the final step's overrun
    assert result.steps > trainer.history["dagger_step"][0] > 0  # training went on after


def test_bad_dagger_settings_are_refused():
    with pytest.raises(ValueError, match="dagger_episodes must be >= 0"):
        BCConfig(dagger_episodes=-1)
    with pytest.raises(ValueError, match="at least one per round"):
        BCConfig(dagger_episodes=2, dagger_rounds=3)
