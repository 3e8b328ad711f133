"""Policies that read a wrist camera besides the main one: config, inference, checkpoints,
SB3 and rollouts that open the cameras the policy needs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from policy_helpers import tiny_config

from vla_gym.policies import VLAPolicy
from vla_gym.policies.fusion import expected_cell_xy
from vla_gym.policies.preprocessing import ObservationError

PICK = "vla_gym/TabletopPick-v0"
WRIST = ("image", "wrist_image")


@pytest.fixture(scope="module")
def wrist_batch():
    env = gym.make(PICK, image_size=32, cameras=("main", "wrist"))
    rows = []
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        rows.append(obs)
    env.close()
    batch = {key: np.stack([row[key] for row in rows]) for key in ("image", "wrist_image",
                                                                     "state")}
    batch["instruction"] = [row["instruction"] for row in rows]
    return batch


@pytest.mark.parametrize("fusion", ["film", "concat", "cross_attention"])
def test_wrist_view_changes_the_action_and_survives_a_round_trip(wrist_batch, fusion, tmp_path):
    policy = VLAPolicy(tiny_config(views=WRIST, fusion={"kind": fusion}))
    assert policy.config.cameras == ("main", "wrist")
    assert len(policy.trunk.extra_vision) == 1 and len(policy.trunk.extra_fusion) == 1
    actions = policy.predict(wrist_batch)
    assert actions.shape == (3, 7)
    # the wrist image is read: a different wrist frame gives a different action
    swapped = {**wrist_batch, "wrist_image": wrist_batch["wrist_image"][::-1].copy()}
    assert not np.allclose(policy.predict(swapped), actions)
    loaded = VLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "p"))
    assert loaded.config.views == WRIST
    np.testing.assert_array_equal(loaded.predict(wrist_batch), actions)


def test_single_view_policy_ignores_extra_images_and_keeps_its_weights(wrist_batch):
    one = VLAPolicy(tiny_config())
    two = VLAPolicy(tiny_config(views=WRIST))
    shared = {k: v for k, v in two.state_dict().items() if k in one.state_dict()}
    assert set(one.state_dict()) <= set(two.state_dict())
    for key, value in one.state_dict().items():  # same seed: the main-camera path is the same
        if not key.startswith(("trunk.out", "heads")):
            assert torch.equal(value, shared[key]), key
    assert one.predict(wrist_batch).shape == (3, 7)


def test_missing_or_bad_wrist_images_name_what_was_expected(wrist_batch):
    policy = VLAPolicy(tiny_config(views=WRIST))
    without = {k: v for k, v in wrist_batch.items() if k != "wrist_image"}
    with pytest.raises(ObservationError, match="missing \\['wrist_image'\\].*cameras|wrist_image"):
        policy.predict(without)
    with pytest.raises(ObservationError, match="'wrist_image' has 2 images but 'image' has 3"):
        policy.predict({**wrist_batch, "wrist_image": wrist_batch["wrist_image"][:2]})
    with pytest.raises(ObservationError, match="'wrist_image' must be uint8"):
        policy.predict({**wrist_batch, "wrist_image": wrist_batch["wrist_image"] / 255.0})


@pytest.mark.parametrize("views, message", [
    (("wrist_image",), "must start with 'image'"),
    (("image", "image"), "name each view once"),
    (("image", "side_image"), "expected one of"),
])
def test_bad_view_lists_are_refused(views, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(views=views)


def test_sb3_extractor_reads_the_wrist_view():
    pytest.importorskip("stable_baselines3")
    from vla_gym.policies.sb3 import VLAFeaturesExtractor, make_sb3_env

    config = tiny_config(views=WRIST)
    venv = make_sb3_env(PICK, config, image_size=32, cameras=("main", "wrist"))
    extractor = VLAFeaturesExtractor(venv.observation_space, config)
    obs = {k: torch.as_tensor(v) for k, v in venv.reset().items()}
    assert extractor(obs).shape == (1, config.hidden)
    main_only = make_sb3_env(PICK, config, image_size=32)
    with pytest.raises(ValueError, match="wrist_image.*cameras=\\('main', 'wrist'\\)"):
        VLAFeaturesExtractor(main_only.observation_space, config)
    venv.close()
    main_only.close()


def test_rollout_of_a_wrist_policy_opens_the_wrist_camera(tmp_path):
    from vla_gym.rollout import run_rollouts

    path = VLAPolicy(tiny_config(views=WRIST)).save_pretrained(tmp_path / "p")
    summary = run_rollouts(PICK, str(path), episodes=1, seed=3,
                           env_kwargs={"image_size": 32, "max_episode_steps": 5})
    assert summary.episodes == 1 and summary.policy == str(path)


@pytest.mark.parametrize("indices", [(0, 21), (3, 3), (-1,)])
def test_bad_state_indices_are_refused(indices):
    with pytest.raises(ValueError, match="state_indices must be distinct indices into the 21-D"):
        tiny_config(state_indices=indices)


def test_expected_cell_xy_is_the_maps_centre_of_mass():
    logits = torch.full((1, 16), -50.0)
    logits[0, 1 * 4 + 3] = 50.0  # row 1, column 3 of a 4 x 4 grid
    torch.testing.assert_close(expected_cell_xy(logits), torch.tensor([[1.0, -1.0 / 3.0]]))
    with pytest.raises(ValueError, match="square grid"):
        expected_cell_xy(torch.zeros(1, 15))


@pytest.mark.parametrize("fusion", ["film", "concat"])
def test_target_xy_of_every_view_reaches_the_final_mlp(wrist_batch, fusion, tmp_path):
    config = tiny_config(views=WRIST, fusion={"kind": fusion, "target_xy_to_head": True})
    policy = VLAPolicy(config).eval()
    seen: list[torch.Tensor] = []
    policy.trunk.out.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    maps: list[torch.Tensor | None] = []
    policy.trunk.register_forward_hook(
        lambda module, args, out: maps.extend([out.target_map, *out.extra_maps]))
    actions = policy.predict(wrist_batch)
    dim = config.fusion.dim
    xy = seen[0][:, 2 * dim:2 * dim + 4]  # after both views' fused features, before the state
    if fusion == "film":  # each view's own map: where it puts the instructed object
        expected = torch.cat([expected_cell_xy(m) for m in maps], dim=-1)
        torch.testing.assert_close(xy, expected)
        assert not torch.allclose(expected[:, :2], expected[:, 2:])
    else:  # no target map: zeros, so the layout stays the same
        assert torch.equal(xy, torch.zeros_like(xy))
    loaded = VLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "p"))
    assert loaded.config.fusion.target_xy_to_head
    np.testing.assert_array_equal(loaded.predict(wrist_batch), actions)
