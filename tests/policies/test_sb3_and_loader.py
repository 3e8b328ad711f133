"""The SB3 adapter trains PPO on a tabletop id; load_batch_policy serves vector-env rollouts."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from vla_gym import make_vec
from vla_gym.policies import VLAPolicy, get_config, load_batch_policy

sb3 = pytest.importorskip("stable_baselines3")


@pytest.mark.parametrize("mode", ["tokens", "embedding"])
def test_ppo_updates_the_vla_extractor(mode, tmp_path, monkeypatch):
    import tempfile

    from vla_gym.policies.sb3 import VLAFeaturesExtractor, make_sb3_env, sb3_policy_kwargs

    # Plain SB3 with its default logger makes an SB3-<date> folder in the temp dir per learn()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    config = get_config("small", vision={"image_size": 32})
    env = make_sb3_env("vla_gym/TabletopPick-v0", config=config, mode=mode, image_size=32)
    assert not any(isinstance(s, gym.spaces.Text) for s in env.observation_space.spaces.values())
    model = sb3.PPO("MultiInputPolicy", env, n_steps=16, batch_size=8, n_epochs=2, seed=0,
                    device="cpu", policy_kwargs=sb3_policy_kwargs(config))
    extractor = model.policy.features_extractor
    assert isinstance(extractor, VLAFeaturesExtractor)
    before = [p.detach().clone() for p in extractor.parameters()]
    model.learn(total_timesteps=32)
    assert model.logger.name_to_value["train/n_updates"] > 0
    moved = [not torch.equal(a, b) for a, b in zip(extractor.parameters(), before)]
    assert any(moved), "PPO did not update the VLA encoders"
    action, _ = model.predict(env.reset(), deterministic=True)
    assert action.shape == (1, 7)


def test_wrapper_caches_instruction_encodings():
    from vla_gym.policies.sb3 import IDS, MASK, InstructionToBox

    env = InstructionToBox(gym.make("vla_gym/TabletopPick-v0", image_size=32), "small")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs[MASK].sum() > 1 and obs[IDS][obs[MASK] == 0].sum() == 0
    env.step(env.action_space.sample())
    assert len(env._cache) == 1
    with pytest.raises(ValueError, match="mode must be one of"):
        InstructionToBox(gym.make("vla_gym/TabletopPick-v0", image_size=32), "small", "text")


def test_load_batch_policy_drives_a_vector_env(tmp_path):
    policy = VLAPolicy.from_preset("small")
    policy.save_pretrained(tmp_path)
    act = load_batch_policy(tmp_path)
    envs = make_vec("vla_gym/TabletopPick-v0", num_envs=2, vectorization_mode="sync",
                    image_size=64)
    obs, info = envs.reset(seed=0)
    assert isinstance(obs["instruction"], tuple)
    for _ in range(2):
        actions = act(obs, info)
        assert actions.shape == (2, 7) and actions.dtype == np.float32
        obs, _, _, _, info = envs.step(actions)
    np.testing.assert_array_equal(act(obs, info), policy.predict(obs))
    int8 = load_batch_policy(tmp_path, int8=True)
    assert np.abs(int8(obs, info) - act(obs, info)).max() < 0.05
    envs.close()


def test_load_batch_policy_of_an_action_set_gives_indices(tmp_path):
    VLAPolicy(get_config("small", head={"kind": "discrete", "num_actions": 15})
              ).save_pretrained(tmp_path)
    from vla_gym.envs.wrappers import DiscreteActions

    env = DiscreteActions(gym.make("vla_gym/TabletopPick-v0", image_size=64))
    obs, info = env.reset(seed=0)
    act = load_batch_policy(tmp_path)
    batch = {k: (np.asarray(v)[None] if k != "instruction" else (v,)) for k, v in obs.items()}
    index = act(batch, {})
    assert index.shape == (1,) and env.action_space.contains(int(index[0]))
    env.step(int(index[0]))
