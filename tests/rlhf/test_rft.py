"""Reward-ranked fine-tuning: which episodes it keeps, what the fit does to the policy, and the
loop with ``algo="rft"``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from rlhf_helpers import PICK, tiny_policy_config, tiny_reward_config

from vla_gym.policies import VLAPolicy
from vla_gym.training.rft import (
    ActionNoise,
    EliteBuffer,
    Episode,
    FocusedPolicy,
    RankedFineTuning,
    best_per_scene,
    hindsight_pixels,
    lifting_grasp,
    roll_out,
    top_episodes,
)
from vla_gym.training.rlhf import RLConfig, RLHFConfig, run_rlhf
from vla_gym.types import ARM_STATE_FIELDS, FOCUS, IMAGE, INSTRUCTION, STATE

STATE_DIM = len(ARM_STATE_FIELDS)
ENV_KWARGS = {"image_size": 32, "terminate_on_success": False, "max_episode_steps": 20}


def _episode(learned: float, true: float, action: float = 0.0, steps: int = 4) -> Episode:
    rng = np.random.default_rng(int(learned * 10 + true))
    obs = {IMAGE: rng.integers(0, 255, (steps, 32, 32, 3), dtype=np.uint8),
           STATE: rng.normal(size=(steps, STATE_DIM)).astype(np.float32),
           INSTRUCTION: ["pick up the red cube"] * steps}
    actions = np.full((steps, 7), action, np.float32)
    return Episode(obs, actions, np.zeros((steps, 7), np.float32), learned, true, true > 0)


def _policy() -> VLAPolicy:
    rng = np.random.default_rng(0)
    policy = VLAPolicy(tiny_policy_config())
    policy.set_normalization(actions=rng.normal(0.0, 0.5, (64, 7)),
                             states=rng.normal(0.0, 1.0, (64, STATE_DIM)))
    return policy.eval()


def test_top_episodes_ranks_by_the_learned_return_never_the_true_one():
    episodes = [_episode(learned=v, true=t) for v, t in [(1.0, 9.0), (5.0, 0.0), (3.0, 8.0),
                                                         (4.0, 0.0), (2.0, 7.0)]]
    kept = top_episodes(episodes, 0.4)
    assert [e.learned_return for e in kept] == [5.0, 4.0]  # both with true return 0
    assert len(top_episodes(episodes, 0.01)) == 1 and len(top_episodes(episodes, 1.0)) == 5
    with pytest.raises(ValueError, match="keep"):
        top_episodes(episodes, 0.0)


def test_elite_buffer_samples_whole_observations_with_their_actions():
    buffer = EliteBuffer()
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(4, np.random.default_rng(0))
    buffer.add([_episode(1.0, 0.0, action=0.5), _episode(2.0, 0.0, action=-0.5, steps=6)])
    assert len(buffer) == 10
    batch = buffer.sample(64, np.random.default_rng(0))
    assert batch[IMAGE].shape == (64, 32, 32, 3) and batch[STATE].shape == (64, STATE_DIM)
    assert batch["action"].shape == (64, 7) and batch["anchor_action"].shape == (64, 7)
    assert all(isinstance(t, str) for t in batch[INSTRUCTION])
    assert set(np.unique(batch["action"])) == {-0.5, 0.5}  # rows from both episodes


@pytest.mark.parametrize("bc_weight", [0.0, 4.0])
def test_the_fit_moves_the_policy_to_the_kept_actions_and_the_anchor_holds_it_back(bc_weight):
    bc = _policy()
    rl = RLConfig(algo="rft", batch_size=16, rft_updates=60, rft_lr=3e-3, bc_weight=bc_weight)
    learner = RankedFineTuning(bc, rl, PICK, ENV_KWARGS, 20)
    target = 0.6
    episodes = [_episode(1.0, 0.0, action=target, steps=8) for _ in range(3)]
    for e in episodes:  # the anchor's targets: what BC does on these observations
        e.bc_actions = bc.predict(e.observations)
    learner.buffer.add(episodes)
    obs = episodes[0].observations
    before = np.abs(bc.predict(obs) - target).mean()
    losses = learner._fit()
    after = np.abs(learner.policy.predict(obs) - target).mean()
    assert losses[-1] < losses[0]
    if bc_weight == 0:
        assert after < 0.5 * before
    else:  # pulled both ways: ends between BC and the kept actions
        assert 0.2 * before < after < before
    # the BC policy it was given is untouched
    assert np.array_equal(bc.predict(obs), episodes[0].bc_actions)


def test_rollouts_are_seeded_and_scored_by_the_given_reward():
    policy = _policy()
    calls = []

    def score(obs):
        calls.append(len(obs[IMAGE]))
        return np.full(len(obs[IMAGE]), 0.25)

    def run(score_fn):
        return roll_out(PICK, ENV_KWARGS, policy, policy, score_fn, [5, 6, 7], [0.0, 0.3, 0.3],
                        np.random.default_rng(1), num_envs=2)

    first, second = run(score), run(score)
    assert calls and sum(calls) == 2 * 3 * 20  # every step of every episode, twice
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.actions, b.actions)
        assert np.array_equal(a.observations[IMAGE], b.observations[IMAGE])
        assert a.learned_return == pytest.approx(20 * 0.25)
    assert len(first[0].actions) == 20 and first[0].noise == 0.0
    # noise-free episodes act as the policy does; the BC action is recorded beside each step
    assert np.allclose(first[0].actions, first[0].bc_actions)
    assert not np.allclose(first[1].actions, first[1].bc_actions)
    # the anchor's ranking (no score) is the env's own return
    assert [e.learned_return for e in run(None)] == [e.true_return for e in first]


def test_rlhf_loop_with_rft_runs_end_to_end_and_saves_the_tuned_policy(tmp_path):
    rng = np.random.default_rng(0)
    policy = VLAPolicy(tiny_policy_config())
    policy.set_normalization(actions=rng.normal(0.1, 0.3, (64, 7)),
                             states=rng.normal(0.5, 2.0, (64, STATE_DIM)))
    bc = policy.save_pretrained(tmp_path / "bc")
    config = RLHFConfig(env_id=PICK, labels=24, iterations=2, rl_steps=160, segment_length=10,
                        rollout_seeds=2, noise_levels=(0.0, 1.0),
                        reward=tiny_reward_config(steps=10),
                        rl=RLConfig(algo="rft", n_envs=2, batch_size=16, rft_updates=5),
                        eval_episodes=2, env_kwargs={"image_size": 32, "max_episode_steps": 20})
    metrics = run_rlhf(config, bc, tmp_path / "run")
    rl = [it["rl"] for it in metrics["iterations"]]
    assert [r["episodes"] for r in rl] == [4, 4] and [r["kept"] for r in rl] == [1, 1]
    assert rl[-1]["elite_episodes"] == 2 and metrics["final"]["rl_steps"] == 160
    assert not (tmp_path / "run" / "iter_0" / "sb3_model.zip").exists()
    tuned = VLAPolicy.from_pretrained(tmp_path / "run" / "policy")
    obs = {IMAGE: np.zeros((1, 32, 32, 3), np.uint8), STATE: np.zeros((1, STATE_DIM),
           np.float32), INSTRUCTION: ["pick up the red cube"]}
    assert not np.array_equal(tuned.predict(obs), policy.eval().predict(obs))


def test_rft_settings_are_checked():
    with pytest.raises(ValueError, match="rft_keep"):
        RLConfig(algo="rft", rft_keep=1.5)
    with pytest.raises(ValueError, match="rft_noise"):
        RLConfig(algo="rft", rft_noise=())
    for correlation in (-0.1, 1.0):
        with pytest.raises(ValueError, match="rft_noise_correlation"):
            RLConfig(algo="rft", rft_noise_correlation=correlation)
    with pytest.raises(ValueError, match="algo"):
        dataclasses.replace(RLConfig(), algo="a2c")


def test_lifting_grasp_is_the_closed_run_that_rose_most():
    closed = np.array([0, 1, 1, 0, 1, 1, 1, 1, 0, 1], bool)
    z = np.array([.10, .10, .11, .10, .10, .12, .16, .18, .18, .18])
    assert lifting_grasp(closed, z) == (4, 8)
    assert lifting_grasp(closed, np.full(10, 0.1)) is None  # closed, never lifted
    assert lifting_grasp(np.zeros(10, bool), z) is None
    assert lifting_grasp(np.ones(3, bool), np.array([.1, .12, .2])) == (0, 3)


def test_hindsight_labels_of_an_expert_lift_match_the_envs_target_pixels():
    """The scripted expert lifts the target: labels made from its actions and states alone (the
    grasp onset's effector position, projected with the policy's calibration) land where the
    env's own target-pixel labels are in the main camera, every frame of the episode."""
    import gymnasium as gym

    from vla_gym.experts import make_expert
    from vla_gym.policies.geometry import calibration_from_env

    env = gym.make(PICK, image_size=32, cameras=("main", "wrist"), terminate_on_success=False,
                   max_episode_steps=60)
    views = ("image", "wrist_image")
    policy = VLAPolicy(tiny_policy_config(
        views=views, fusion={"kind": "film"},
        geometry={"cameras": calibration_from_env(env, views)},
        aux={"grounding_weight": 1.0, "grounding_classes": ("red cube",)}))
    obs, info = env.reset(seed=4)
    expert = make_expert(env)
    rows, actions, truth = [], [], []
    done = False
    while not done:
        action = expert.act(obs)
        rows.append(obs)
        truth.append((info["target_pixel"], info["wrist_target_pixel"]))
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    env.close()
    observations = {k: ([r[k] for r in rows] if k == INSTRUCTION
                         else np.stack([r[k] for r in rows])) for k in rows[0]}
    episode = Episode(observations, np.stack(actions), np.stack(actions))
    labels = hindsight_pixels(policy, episode)
    # the world-fixed main camera only (the wrist camera is too close for the grasp point)
    assert set(labels) == {"target_pixel"}
    main_truth = np.stack([t[0] for t in truth])
    # The object sits where the gripper closed (within ~2 cm): a few hundredths of the image.
    assert np.isfinite(labels["target_pixel"]).all()
    assert np.abs(labels["target_pixel"] - main_truth).max() < 0.04
    # an episode that never lifts gets no labels; nor does a policy without geometry
    still = Episode(observations, np.stack(actions) * 0 - 1, np.stack(actions))
    assert hindsight_pixels(policy, still) == {}
    assert hindsight_pixels(_policy(), episode) == {}


def test_train_rlhf_cli_takes_rft(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import vla_gym.training.rlhf as rlhf
    from vla_gym.cli import app

    seen = {}

    def fake(config, bc, out, extra=None, log=None):
        seen["algo"], seen["explore"] = config.rl.algo, config.rl.rft_explore
        seen["correlation"] = config.rl.rft_noise_correlation
        figures = {"success_rate": 0.5}
        return {"bc_eval": figures, "final": {"eval": figures, "labels": config.labels}}

    monkeypatch.setattr(rlhf, "run_rlhf", fake)
    result = CliRunner().invoke(app, ["train", "rlhf", "--bc", str(tmp_path), "--env", PICK,
                                      "--out", str(tmp_path / "run"), "--algo", "rft",
                                      "--rft-explore", "2", "--rft-noise-correlation", "0.9"])
    assert result.exit_code == 0, result.output
    assert seen == {"algo": "rft", "explore": 2, "correlation": 0.9}


def test_an_anchor_weight_needs_anchor_actions_and_adds_their_loss():
    from vla_gym.policies.preprocessing import ObservationError

    policy = _policy().train()
    episode = _episode(1.0, 0.0, action=0.3)
    batch = {**episode.observations, "action": episode.actions}
    with pytest.raises(ObservationError, match="anchor_action"):
        policy(batch, anchor_weight=1.0)
    plain, _ = policy(batch)
    same, metrics = policy({**batch, "anchor_action": episode.actions}, anchor_weight=2.0)
    assert same.item() == pytest.approx(3 * plain.item(), rel=1e-5)
    assert metrics["anchor_loss"] == pytest.approx(plain.item(), rel=1e-5)


VIEWS = ("image", "wrist_image")
WRIST_KWARGS = {**ENV_KWARGS, "cameras": ("main", "wrist")}


def _geometry_policy() -> VLAPolicy:
    import gymnasium as gym

    from vla_gym.policies.geometry import calibration_from_env

    env = gym.make(PICK, image_size=32, cameras=("main", "wrist"))
    calibration = calibration_from_env(env, VIEWS)
    env.close()
    rng = np.random.default_rng(0)
    policy = VLAPolicy(tiny_policy_config(
        views=VIEWS, fusion={"kind": "film"}, geometry={"cameras": calibration},
        aux={"grounding_weight": 1.0, "grounding_classes": ("red cube",)}))
    policy.set_normalization(actions=rng.normal(0.0, 0.5, (64, 7)),
                             states=rng.normal(0.0, 1.0, (64, STATE_DIM)))
    return policy.eval()


def test_best_per_scene_keeps_each_seeds_highest_learned_return():
    episodes = [_episode(v, 0.0) for v in (1.0, 3.0, 2.0, 0.5, 0.5, 0.2)]
    best = best_per_scene(episodes, [7, 7, 7, 8, 8, 9])
    assert [e.learned_return for e in best] == [3.0, 0.5, 0.2]
    assert best[1] is episodes[3]  # a tie keeps the earlier try
    with pytest.raises(ValueError):
        best_per_scene(episodes, [7, 7])


def test_steered_tries_hold_their_focus_for_the_episode_and_differ_from_the_own_try():
    policy = _geometry_policy()
    episodes = roll_out(PICK, WRIST_KWARGS, policy, policy, None, [5, 5, 5], [0.0] * 3,
                        np.random.default_rng(0), num_envs=3, ranks=[None, 0, 2])
    own, first, third = episodes
    assert [e.focus_rank for e in episodes] == [None, 0, 2]
    assert np.isnan(own.observations[FOCUS]).all()
    for steered in (first, third):
        focus = steered.observations[FOCUS]
        assert np.isfinite(focus).all() and (focus == focus[0]).all()  # held all episode
    assert not np.allclose(first.observations[FOCUS][0], third.observations[FOCUS][0])
    np.testing.assert_array_equal(own.observations[IMAGE][0], third.observations[IMAGE][0])
    assert not np.allclose(own.actions, third.actions)
    # the reference action is BC's under the same focus (here BC is the policy itself)
    np.testing.assert_allclose(third.actions, third.bc_actions)
    with pytest.raises(ValueError, match="one focus rank per seed"):
        roll_out(PICK, WRIST_KWARGS, policy, policy, None, [5], [0.0],
                 np.random.default_rng(0), ranks=[None, 1])


def test_exploring_rft_tries_each_scene_several_times_and_fits_on_the_best():
    policy = _geometry_policy()
    rl = RLConfig(algo="rft", n_envs=3, batch_size=8, rft_updates=3, rft_keep=1.0,
                  rft_explore=2, rft_noise=(0.0,))
    learner = RankedFineTuning(policy, rl, PICK, WRIST_KWARGS | {"max_episode_steps": 20}, 20)
    result = learner.improve(130, score=None)  # 6 episodes: 2 scenes x (own + 2 steered)
    assert result["episodes"] == 6 and result["kept"] == 2 and result["steps"] == 120
    assert learner.scenes_run == 2
    assert 0 <= result["kept_steered"] <= 2
    batch = learner.buffer.sample(8, np.random.default_rng(0))
    assert batch[FOCUS].shape == (8, 3)
    again = RankedFineTuning(policy, rl, PICK, WRIST_KWARGS | {"max_episode_steps": 20}, 20)
    assert again.improve(130, score=None)["mean_true_return"] == result["mean_true_return"]


def test_focused_policy_picks_its_focus_per_episode():
    policy = _geometry_policy()
    steer = FocusedPolicy(policy, 1)
    obs = {IMAGE: np.zeros((2, 32, 32, 3), np.uint8), "wrist_image": np.zeros(
        (2, 32, 32, 3), np.uint8), STATE: np.zeros((2, STATE_DIM), np.float32),
        INSTRUCTION: ["pick up the red cube"] * 2}
    actions = steer(obs, {})
    assert actions.shape == (2, 7) and steer.focus is not None
    np.testing.assert_allclose(steer.focus, policy.target_candidates(obs, 2)[:, 1])
    with pytest.raises(ValueError, match="reset"):
        steer({k: v[:1] for k, v in obs.items()}, {})
    steer.reset()
    assert steer({k: v[:1] for k, v in obs.items()}, {}).shape == (1, 7)


def test_queries_for_exploring_rft_include_the_steered_tries(tmp_path):
    from vla_gym.training.preferences import read_query_set
    from vla_gym.training.rlhf import RLHFRun

    bc = _geometry_policy().save_pretrained(tmp_path / "bc")
    config = RLHFConfig(env_id=PICK, labels=4, iterations=1, rollout_seeds=1,
                        segment_length=10, noise_levels=(0.0,),
                        rl=RLConfig(algo="rft", rft_explore=2),
                        env_kwargs={"image_size": 32, "max_episode_steps": 20})
    directory = RLHFRun(config, bc, tmp_path / "run").collect_queries(0)
    segments = read_query_set(directory, check_clips=False).segments
    assert set(segments.variants) == {"iter0-noise0", "iter0-focus0", "iter0-focus1"}
    steered, own = (segments.variants == v for v in ("iter0-focus1", "iter0-noise0"))
    assert set(segments.seeds[steered]) == set(segments.seeds[own])  # the same scene
    assert not np.array_equal(segments.states[steered], segments.states[own])  # other acts


def test_the_map_anchor_is_zero_on_the_reference_itself_and_pulls_maps_toward_it():
    from vla_gym.policies.preprocessing import ObservationError
    from vla_gym.training.rft import reference_maps
    from vla_gym.types import anchor_map_key

    policy, other = _geometry_policy(), _geometry_policy()
    with torch.no_grad():  # a different reference: the same policy with its map logit moved
        other.trunk.fusion.target_logit.weight.normal_(0.0, 1.0)
    rng = np.random.default_rng(0)
    batch = {IMAGE: rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8),
             "wrist_image": rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8),
             STATE: rng.normal(size=(6, STATE_DIM)).astype(np.float32),
             INSTRUCTION: ["pick up the red cube"] * 6, "action": np.zeros((6, 7), np.float32)}
    own = reference_maps(policy, batch)
    assert set(own) == {anchor_map_key(v) for v in VIEWS} == {
        "anchor_target_map", "wrist_anchor_target_map"}
    _, metrics = policy({**batch, **own})
    assert metrics["image_map_anchor_kl"] == pytest.approx(0.0, abs=1e-5)
    target = reference_maps(other, batch)
    policy.train()
    optimiser = torch.optim.Adam(policy.parameters(), lr=1e-2)
    kls = []
    for _ in range(30):
        loss, metrics = policy({**batch, **target})
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        kls.append(metrics["image_map_anchor_kl"])
    assert kls[0] > 0.05 and kls[-1] < 0.5 * kls[0]
    with pytest.raises(ObservationError, match="anchor_target_map"):
        policy({**batch, "anchor_target_map": target["anchor_target_map"][:, :5]})


def test_rft_with_the_map_anchor_fits_and_stays_nearer_the_bc_maps():
    bc = _geometry_policy()
    episodes = roll_out(PICK, WRIST_KWARGS, bc, bc, None, [3, 4], [0.0, 0.0],
                        np.random.default_rng(0), num_envs=2)
    rng = np.random.default_rng(1)
    for episode in episodes:  # labels far from where the BC maps look
        episode.labels = {"target_pixel": rng.uniform(0.0, 1.0, (len(episode.actions), 2))
                          .astype(np.float32)}
    drift = {}
    for anchored in (False, True):
        rl = RLConfig(algo="rft", batch_size=16, rft_updates=40, rft_lr=3e-3,
                      rft_map_anchor=anchored)
        learner = RankedFineTuning(bc, rl, PICK, WRIST_KWARGS, 20)
        learner.buffer.add(episodes)
        learner._fit()
        frames = episodes[0].observations
        with torch.no_grad():
            tuned = learner.policy.features(learner.policy.preprocess(frames)).target_map
            start = bc.features(bc.preprocess(frames)).target_map
        drift[anchored] = float(torch.nn.functional.kl_div(
            tuned.log_softmax(-1), start.log_softmax(-1), log_target=True,
            reduction="batchmean"))
    assert drift[True] < drift[False]


def test_white_action_noise_is_the_rng_draw_scaled_by_sigma():
    sigma = np.array([[0.5, 0.0], [1.0, 2.0]], np.float32)
    noise = ActionNoise(sigma, 0.0, np.random.default_rng(3))
    expected = np.random.default_rng(3)
    for _ in range(3):
        np.testing.assert_array_equal(
            noise((2, 2)), sigma * expected.standard_normal((2, 2), dtype=np.float32))


def test_correlated_action_noise_keeps_its_std_and_correlates_steps():
    sigma = np.array([[0.2, 1.0]], np.float32)
    noise = ActionNoise(sigma, 0.9, np.random.default_rng(0))
    draws = np.stack([noise((1, 2))[0] for _ in range(20_000)])  # (T, 2)
    np.testing.assert_allclose(draws.std(axis=0), [0.2, 1.0], rtol=0.08)
    lag1 = [np.corrcoef(draws[:-1, d], draws[1:, d])[0, 1] for d in range(2)]
    np.testing.assert_allclose(lag1, [0.9, 0.9], atol=0.02)
    # the point of it: a 50-step motion's mean noise varies far more than white noise's
    white = ActionNoise(sigma, 0.0, np.random.default_rng(0))
    white_draws = np.stack([white((1, 2))[0] for _ in range(20_000)])
    block_std = draws[:, 1].reshape(-1, 50).mean(axis=1).std()
    white_block_std = white_draws[:, 1].reshape(-1, 50).mean(axis=1).std()
    assert block_std > 3 * white_block_std
    with pytest.raises(ValueError, match="correlation"):
        ActionNoise(sigma, 1.0, np.random.default_rng(0))
