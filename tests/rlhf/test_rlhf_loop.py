"""The learned-reward wrapper, the BC-initialised actor, and the whole loop end to end."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from rlhf_helpers import ENV_KWARGS, PICK, tiny_reward_config
from typer.testing import CliRunner

from vla_gym.policies import VLAPolicy
from vla_gym.training.preferences import read_query_set
from vla_gym.training.reward_model import RewardEnsemble
from vla_gym.training.rlhf import (
    BCAnchor,
    LearnedReward,
    RLConfig,
    RLHFConfig,
    build_model,
    make_rl_env,
    run_rlhf,
)
from vla_gym.training.sb3_init import export_policy
from vla_gym.types import ARM_STATE_FIELDS

STATE_DIM = len(ARM_STATE_FIELDS)


@pytest.fixture(scope="module")
def reward_model() -> RewardEnsemble:
    return RewardEnsemble(tiny_reward_config(), state_dim=STATE_DIM).eval()


def tiny_loop_config(**changes) -> RLHFConfig:
    base = dict(env_id=PICK, labels=24, iterations=2, rl_steps=128, segment_length=10,
                rollout_seeds=2, noise_levels=(0.0, 1.0), reward=tiny_reward_config(steps=10),
                rl=RLConfig(n_envs=2, n_steps=32, batch_size=32, n_epochs=2, critic_warmup=1),
                eval_episodes=2, env_kwargs={"image_size": 32})
    return RLHFConfig(**{**base, **changes})


def test_learned_reward_wrapper_passes_check_env(reward_model):
    env = LearnedReward(gym.make(PICK, **ENV_KWARGS).unwrapped, reward_model)
    check_env(env, skip_render_check=True)


def test_the_learner_sees_the_learned_reward_never_the_true_one(reward_model):
    """Two envs whose true rewards differ (all weights zero vs the defaults) give the learner
    identical rewards; the true reward is only in info."""
    zero = {k: 0.0 for k in ("reach", "grasp", "lift", "success")}
    envs = [LearnedReward(gym.make(PICK, **ENV_KWARGS, reward_weights=w), reward_model)
            for w in (None, zero)]
    for env in envs:
        env.reset(seed=3)
    action = np.full(7, 0.3, np.float32)
    (_, r_default, *_, info_default), (_, r_zero, *_, info_zero) = (e.step(action)
                                                                    for e in envs)
    assert r_default == r_zero == info_default["learned_reward"]
    assert info_zero["true_reward"] == 0.0 and info_default["true_reward"] > 0.0


def test_the_rl_vector_env_scores_in_batch_exactly_as_the_wrappers_do(reward_model, tiny_bc):
    policy = VLAPolicy.from_pretrained(tiny_bc)
    zero = {k: 0.0 for k in ("reach", "grasp", "lift", "success")}
    venvs = [make_rl_env(PICK, {**ENV_KWARGS, **extra}, policy, reward_model, 0.5, n_envs=2,
                         seed=7) for extra in ({}, {"reward_weights": zero})]
    for venv in venvs:
        venv.reset()
    actions = np.full((2, 7), 0.3, np.float32)
    (_, rewards, _, infos), (_, rewards_zero, _, infos_zero) = (v.step(actions) for v in venvs)
    np.testing.assert_allclose(rewards, rewards_zero)  # the true reward does not reach it
    assert infos_zero[1]["true_reward"] == 0.0 and infos[1]["true_reward"] > 0.0
    single = BCAnchor(LearnedReward(gym.make(PICK, **ENV_KWARGS), reward_model), policy, 0.5)
    single.reset(seed=8)  # sub-env 1 of a vector env seeded with 7
    _, reward, *_, info = single.step(actions[1])
    assert reward == pytest.approx(float(rewards[1]), abs=1e-5)
    assert info["bc_penalty"] == pytest.approx(infos[1]["bc_penalty"], abs=1e-6)


def test_bc_anchor_penalises_only_leaving_the_bc_action(tiny_bc):
    policy = VLAPolicy.from_pretrained(tiny_bc)
    env = BCAnchor(gym.make(PICK, **ENV_KWARGS), policy, weight=2.0)
    obs, _ = env.reset(seed=0)
    _, reward, *_, info = env.step(policy.act(obs))
    assert info["bc_penalty"] == pytest.approx(0.0, abs=1e-8)
    assert reward == pytest.approx(info["true_reward"])
    _, reward, *_, info = env.step(np.clip(policy.act(env._obs) + 0.5, -1, 1))
    assert info["bc_penalty"] > 0.1 and reward < info["true_reward"]


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_rl_actor_starts_as_the_bc_policy_and_exports_back(tiny_bc, algo, tmp_path):
    policy = VLAPolicy.from_pretrained(tiny_bc).eval()
    if algo == "ppo":  # as BC trains it: the state MLP reads a subset (no velocities)
        reads = VLAPolicy(policy.config.replace(state_indices=(0, 1, 2, 12, 13, 14, 15)))
        reads.set_normalization(actions=np.random.default_rng(0).normal(0.1, 0.3, (64, 7)),
                                states=np.random.default_rng(1).normal(0.5, 2.0, (64, STATE_DIM)))
        policy = VLAPolicy.from_pretrained(reads.save_pretrained(tmp_path / "subset")).eval()
    venv = make_rl_env(PICK, ENV_KWARGS, policy, None, 0.0, n_envs=2, seed=0)
    model = build_model(policy, venv, RLConfig(algo=algo, n_steps=16, batch_size=16))
    boxed = venv.reset()
    raw = [env.current for env in venv.raws]
    expected = policy.predict({k: (np.stack([o[k] for o in raw]) if k != "instruction"
                                   else [o[k] for o in raw]) for k in raw[0]})
    actions, _ = model.predict(boxed, deterministic=True)
    tolerance = 1e-5 if algo == "ppo" else 0.05  # SAC squashes its mean through tanh
    np.testing.assert_allclose(actions, expected, atol=tolerance)
    model.learn(32)
    exported = export_policy(model.policy, policy)
    after, _ = model.predict(boxed, deterministic=True)
    if algo == "ppo":
        np.testing.assert_allclose(exported.predict(_batch(raw)), after, atol=1e-5)


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_rl_without_a_tensorboard_dir_leaves_nothing_in_the_temp_dir(tiny_bc, algo, tmp_path,
                                                                     monkeypatch):
    import tempfile

    scratch = tmp_path / "system_tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    policy = VLAPolicy.from_pretrained(tiny_bc).eval()
    venv = make_rl_env(PICK, ENV_KWARGS, policy, None, 0.0, n_envs=2, seed=0)
    model = build_model(policy, venv, RLConfig(algo=algo, n_steps=16, batch_size=16))
    model.learn(32)
    model.learn(32, reset_num_timesteps=False)
    assert model.num_timesteps >= 64
    # (torch may keep its compile cache there; that is torch's, not a per-run folder)
    assert [p.name for p in scratch.iterdir() if p.name.startswith("SB3")] == []


def test_rl_actor_of_a_target_geometry_policy_starts_at_its_bc_actions(tiny_bc, tmp_path):
    """The RL features extractor hands the trunk raw state; the geometry must read the
    gripper's pose from it exactly as the BC policy does from its unstandardised input."""
    from vla_gym.policies.geometry import calibration_from_env

    env = gym.make(PICK, **ENV_KWARGS)
    calibration = calibration_from_env(env, ("image",))
    env.close()
    base = VLAPolicy.from_pretrained(tiny_bc).config
    geometry = VLAPolicy(base.replace(
        fusion={"kind": "film"}, geometry={"cameras": calibration},
        aux={"grounding_weight": 1.0, "grounding_classes": ("red cube",)},
        state_indices=(0, 1, 2, 12, 13, 14, 15)))
    geometry.set_normalization(actions=np.random.default_rng(0).normal(0.1, 0.3, (64, 7)),
                               states=np.random.default_rng(1).normal(0.5, 2.0, (64, STATE_DIM)))
    policy = VLAPolicy.from_pretrained(geometry.save_pretrained(tmp_path / "geo")).eval()
    venv = make_rl_env(PICK, ENV_KWARGS, policy, None, 0.0, n_envs=2, seed=0)
    model = build_model(policy, venv, RLConfig(algo="ppo", n_steps=16, batch_size=16))
    boxed = venv.reset()
    raw = [env.current for env in venv.raws]
    actions, _ = model.predict(boxed, deterministic=True)
    np.testing.assert_allclose(actions, policy.predict(_batch(raw)), atol=1e-5)


def _batch(raw: list[dict]) -> dict:
    return {k: (np.stack([o[k] for o in raw]) if k != "instruction" else [o[k] for o in raw])
            for k in raw[0]}


def test_a_bc_policy_with_a_discrete_head_is_refused(tmp_path):
    from vla_gym.policies import get_config

    VLAPolicy(get_config("small", head={"kind": "discrete"})).save_pretrained(tmp_path / "p")
    with pytest.raises(ValueError, match="continuous action head"):
        run_rlhf(tiny_loop_config(), tmp_path / "p", tmp_path / "run")


def test_short_rlhf_loop_runs_end_to_end(tiny_bc, tmp_path):
    metrics = run_rlhf(tiny_loop_config(), tiny_bc, tmp_path / "run")
    iterations = metrics["iterations"]
    assert [it["labels_total"] for it in iterations] == [12, 24]
    assert [it["selection"] for it in iterations] == ["random", "disagreement"]
    assert all("held_out_accuracy" in it["reward_model"] for it in iterations)
    assert metrics["final"]["labels"] == 24 and metrics["final"]["rl_steps"] >= 128
    assert iterations[-1]["rl"]["episodes"] >= 0 and "success_rate" in metrics["bc_eval"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["final"]["eval"] == metrics["final"]["eval"]
    for k in range(2):
        assert (tmp_path / "run" / f"iter_{k}" / "reward_model" / "config.json").is_file()
        assert (tmp_path / "run" / f"iter_{k}" / "sb3_model.zip").is_file()
    result = CliRunner().invoke(_app(), ["eval", "--policy", str(tmp_path / "run"), "--env",
                                         PICK, "--episodes", "1", "--counterfactual", "0"])
    assert result.exit_code == 0, result.output


def test_a_wrist_camera_bc_policy_gets_its_cameras_in_every_env_of_the_loop(tmp_path):
    from rlhf_helpers import tiny_policy_config

    rng = np.random.default_rng(0)
    policy = VLAPolicy(tiny_policy_config(views=("image", "wrist_image")))
    policy.set_normalization(actions=rng.normal(0.1, 0.3, (64, 7)),
                             states=rng.normal(0.5, 2.0, (64, STATE_DIM)))
    bc = policy.save_pretrained(tmp_path / "bc")
    # queries, RL and evaluation all open the wrist camera the policy reads
    metrics = run_rlhf(tiny_loop_config(labels=12, iterations=1, rl_steps=64), bc,
                       tmp_path / "run")
    assert metrics["env_kwargs"]["cameras"] == ("main", "wrist")
    assert metrics["final"]["labels"] == 12 and metrics["final"]["rl_steps"] >= 64
    exported = VLAPolicy.from_pretrained(tmp_path / "run" / "policy")
    assert exported.config.views == ("image", "wrist_image")


def test_train_rlhf_cli_runs_the_loop_and_writes_json(tiny_bc, tmp_path, monkeypatch):
    """The command's options reach the loop; the loop itself is shrunk to test size."""
    import vla_gym.training.rlhf as rlhf

    seen = {}
    real = rlhf.run_rlhf

    def shrunk(config, bc, out, extra=None, log=None):
        seen["config"] = config
        small = tiny_loop_config(labels=config.labels, iterations=1, rl_steps=config.rl_steps,
                                 oracle=config.oracle, clips=config.clips,
                                 rl=dataclasses.replace(tiny_loop_config().rl,
                                                        algo=config.rl.algo))
        return real(small, bc, out, extra, log)

    monkeypatch.setattr(rlhf, "run_rlhf", shrunk)
    out = tmp_path / "figures.json"
    result = CliRunner().invoke(_app(), [
        "train", "rlhf", "--bc", str(tiny_bc), "--env", PICK, "--out", str(tmp_path / "run"),
        "--labels", "10", "--oracle-noise", "0.1", "--steps", "64", "--clips",
        "--reward-inputs", "state", "--lr", "1e-4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert seen["config"].oracle.flip == 0.1 and seen["config"].labels == 10
    assert seen["config"].reward.inputs == "state" and seen["config"].rl.lr == 1e-4
    # the loop's other reward-model settings stay as RLHFConfig has them
    assert seen["config"].reward.frames_per_segment == RLHFConfig(PICK).reward.frames_per_segment
    assert json.loads(out.read_text())["final"]["labels"] == 10
    queries = read_query_set(tmp_path / "run" / "iter_0" / "queries", env_id=PICK)
    assert queries.manifest.meta["clips"] and len(queries.manifest.queries) == 10
    result = CliRunner().invoke(_app(), [
        "train", "rlhf", "--bc", str(tiny_bc), "--env", PICK, "--out", str(tmp_path / "r2"),
        "--algo", "a2c"])
    assert result.exit_code == 2 and "algo" in result.output
    result = CliRunner().invoke(_app(), [
        "train", "rlhf", "--bc", str(tiny_bc), "--env", PICK, "--out", str(tmp_path / "r3"),
        "--reward-inputs", "pixels"])
    assert result.exit_code == 2 and "inputs" in result.output


def _app():
    from vla_gym.cli import app

    return app
