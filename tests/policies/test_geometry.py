"""Target geometry: camera calibration from the env, target maps lifted onto the table, the
height regressor's loss, shift undoing, config checks and checkpoints."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import torch
from policy_helpers import tiny_config

from vla_gym.experts import make_expert
from vla_gym.policies import VLAPolicy
from vla_gym.policies.geometry import (
    EE_POS,
    EE_QUAT,
    TargetGeometry,
    calibration_from_env,
    focus_bias,
    map_peaks,
    map_pixel,
    quaternion_to_matrix,
)
from vla_gym.policies.heads import bilinear_cell_weights
from vla_gym.policies.preprocessing import ObservationError
from vla_gym.types import FOCUS

PICK = "vla_gym/TabletopPick-v0"
VIEWS = ("image", "wrist_image")


@pytest.fixture(scope="module")
def close_to_target():
    """An env, its calibration, and the obs/info once the expert's gripper is near the target
    (so the wrist camera sees it)."""
    env = gym.make(PICK, image_size=32, cameras=("main", "wrist"))
    calibration = calibration_from_env(env, VIEWS)
    obs, info = env.reset(seed=3)
    expert = make_expert(env)
    for _ in range(200):
        obs, _, _, _, info = env.step(expert.act(obs))
        near = np.linalg.norm(obs["state"][list(EE_POS)][:2] - info["target_pos"][:2])
        wrist = info["wrist_target_pixel"]
        if near < 0.05 and np.all((wrist > 0.1) & (wrist < 0.9)):
            break
    else:
        pytest.fail("the expert never brought the target into the wrist view")
    yield env, calibration, obs, info
    env.close()


def exact_map(pixel: np.ndarray, side: int = 8) -> torch.Tensor:
    """Logits whose expected cell position is exactly ``pixel``."""
    weights = bilinear_cell_weights(torch.tensor(pixel, dtype=torch.float32)[None], side)
    return weights.clamp_min(1e-12).log()


def geometry_at_height(calibration, z: float) -> TargetGeometry:
    geometry = TargetGeometry(calibration, VIEWS, fused_dim=4)
    with torch.no_grad():
        geometry.height.weight.zero_()
        geometry.height.bias.fill_(z / 0.01)
    return geometry


def test_calibration_reproduces_every_camera_pose_from_the_state(close_to_target):
    env, calibration, obs, _ = close_to_target
    data, model = env.unwrapped.data, env.unwrapped.model
    state = torch.tensor(obs["state"])[None]
    ee_rot = quaternion_to_matrix(state[:, list(EE_QUAT)])[0].numpy()
    ee = obs["state"][list(EE_POS)]
    wrist = calibration["wrist_image"]
    assert wrist["frame"] == "end_effector" and calibration["image"]["frame"] == "world"
    cam = data.camera("wrist")
    np.testing.assert_allclose(ee + ee_rot @ np.array(wrist["pos"]), cam.xpos, atol=1e-5)
    np.testing.assert_allclose(ee_rot @ np.reshape(wrist["rot"], (3, 3)),
                               cam.xmat.reshape(3, 3), atol=1e-5)
    main = data.camera("main")
    np.testing.assert_allclose(calibration["image"]["pos"], main.xpos, atol=1e-9)
    assert calibration["image"]["fovy"] == pytest.approx(model.cam_fovy[main.id])


def test_projection_gives_the_envs_pixel_labels_in_every_view(close_to_target):
    """``project`` (world point -> pixel, the inverse of lifting) reproduces the env's
    target-pixel labels from the state alone, main and wrist camera; behind a camera is NaN."""
    _, calibration, obs, info = close_to_target
    geometry = TargetGeometry(calibration, VIEWS, fused_dim=4)
    state = torch.tensor(obs["state"])[None]
    target = torch.tensor(info["target_pos"], dtype=torch.float32)[None]
    pixels = geometry.project(target, state)
    np.testing.assert_allclose(pixels["image"][0].numpy(), info["target_pixel"], atol=1e-4)
    np.testing.assert_allclose(pixels["wrist_image"][0].numpy(), info["wrist_target_pixel"],
                               atol=1e-4)
    above = target + torch.tensor([[0.0, 0.0, 5.0]])  # high above the main camera
    assert torch.isnan(geometry.project(above, state)["image"]).all()


def test_exact_maps_lift_to_the_targets_offset_from_the_gripper(close_to_target):
    _, calibration, obs, info = close_to_target
    target = np.asarray(info["target_pos"])
    geometry = geometry_at_height(calibration, float(target[2]))
    maps = [exact_map(info["target_pixel"]), exact_map(info["wrist_target_pixel"])]
    for logits, pixel in zip(maps, (info["target_pixel"], info["wrist_target_pixel"])):
        np.testing.assert_allclose(map_pixel(logits)[0].numpy(), pixel, atol=1e-5)
    state = torch.tensor(obs["state"])[None]
    feats, height = geometry(maps, torch.zeros(1, 4), state)
    ee = obs["state"][list(EE_POS)]
    truth = (target[:2] - ee[:2]) / 0.1
    assert feats.shape == (1, geometry.out_dim) == (1, 7)
    np.testing.assert_allclose(feats[0, 0:2].numpy(), truth, atol=2e-4)  # main camera
    np.testing.assert_allclose(feats[0, 3:5].numpy(), truth, atol=2e-4)  # wrist camera
    assert 0.0 < feats[0, 2] <= 1.0 and 0.0 < feats[0, 5] <= 1.0  # map peaks
    assert feats[0, 6].item() == pytest.approx((target[2] - ee[2]) / 0.1, abs=1e-4)
    assert height.item() == pytest.approx(target[2], abs=1e-6)
    # the wrong height moves the main camera's lifted point along its slanted ray
    off, _ = geometry_at_height(calibration, float(target[2]) + 0.05)(
        maps, torch.zeros(1, 4), state)
    assert np.linalg.norm(off[0, 0:2].numpy() - truth) > 0.2


def test_ray_casting_keeps_float32_under_bf16_autocast(close_to_target):
    _, calibration, obs, info = close_to_target
    geometry = geometry_at_height(calibration, float(info["target_pos"][2]))
    maps = [exact_map(info["target_pixel"]), exact_map(info["wrist_target_pixel"])]
    state = torch.tensor(obs["state"])[None]
    plain, _ = geometry(maps, torch.zeros(1, 4), state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast, _ = geometry(maps, torch.zeros(1, 4), state)
    assert autocast.dtype == torch.float32
    np.testing.assert_allclose(autocast.numpy(), plain.numpy(), atol=2e-3)


def test_a_shifted_images_map_is_moved_back_before_lifting(close_to_target):
    _, calibration, obs, info = close_to_target
    geometry = geometry_at_height(calibration, float(info["target_pos"][2]))
    state = torch.tensor(obs["state"])[None]
    plain = [exact_map(info["target_pixel"]), exact_map(info["wrist_target_pixel"])]
    move = np.array([0.05, -0.04])
    moved = [exact_map(info["target_pixel"] + move), exact_map(info["wrist_target_pixel"] + move)]
    shifts = {view: torch.tensor(move, dtype=torch.float32)[None] for view in VIEWS}
    expected, _ = geometry(plain, torch.zeros(1, 4), state)
    undone, _ = geometry(moved, torch.zeros(1, 4), state, shifts)
    not_undone, _ = geometry(moved, torch.zeros(1, 4), state)
    offsets = [0, 1, 3, 4, 6]  # the peaks differ: the moved maps spread over other cells
    np.testing.assert_allclose(undone[0, offsets].numpy(), expected[0, offsets].numpy(),
                               atol=2e-4)
    assert (not_undone[0, :2] - expected[0, :2]).abs().max() > 0.1


def test_lifting_a_projected_point_gives_it_back(close_to_target):
    _, calibration, obs, info = close_to_target
    geometry = TargetGeometry(calibration, VIEWS, fused_dim=4)
    state = torch.tensor(obs["state"])[None]
    target = torch.tensor(info["target_pos"], dtype=torch.float32)[None]
    for view, pixel in geometry.project(target, state).items():
        back = geometry.lift(view, pixel, target[:, 2], state)
        np.testing.assert_allclose(back.numpy(), target.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="no calibration"):
        geometry.lift("top_image", torch.zeros(1, 2), target[:, 2], state)


def test_map_peaks_finds_separate_blobs_strongest_first():
    side = 12
    logits = torch.full((1, side * side), -20.0)
    for (row, col), value in {(2, 3): 3.0, (8, 9): 4.0, (8, 10): 4.0}.items():
        logits[0, row * side + col] = value
    pixels, mass = map_peaks(logits, 3)
    # the two-cell blob at row 8 is the strongest; its centre of mass lies between its cells
    np.testing.assert_allclose(pixels[0, 0].numpy(), [10.0 / side, 8.5 / side], atol=1e-4)
    np.testing.assert_allclose(pixels[0, 1].numpy(), [3.5 / side, 2.5 / side], atol=1e-4)
    assert mass[0, 0] > mass[0, 1] > mass[0, 2] >= 0.0
    assert mass[0, :2].sum() == pytest.approx(1.0, abs=1e-3)


def test_a_focus_point_pulls_each_view_to_where_it_appears(close_to_target):
    """With a flat main map and a wrist map on the target, a focus on another point of the
    table moves both lifted points to it (the wrist only where it sees the point); NaN
    focus rows and points outside a view leave that map alone."""
    _, calibration, obs, info = close_to_target
    target = np.asarray(info["target_pos"], np.float32)
    geometry = geometry_at_height(calibration, float(target[2]))
    state = torch.tensor(obs["state"])[None].repeat(2, 1)
    maps = [torch.zeros(2, 144), exact_map(info["wrist_target_pixel"], 12).repeat(2, 1)]
    elsewhere = target + np.array([0.2, -0.15, 0.0], np.float32)  # far out of the wrist view
    focus = torch.tensor(np.stack([elsewhere, np.full(3, np.nan, np.float32)]))
    plain, _ = geometry(maps, torch.zeros(2, 4), state)
    steered, _ = geometry(maps, torch.zeros(2, 4), state, focus=focus)
    ee = obs["state"][list(EE_POS)]
    towards = (elsewhere[:2] - ee[:2]) / 0.1
    assert np.linalg.norm(steered[0, 0:2].numpy() - towards) < 0.15  # main: to the focus
    assert np.linalg.norm(plain[0, 0:2].numpy() - towards) > 1.0
    np.testing.assert_allclose(steered[0, 3:5].numpy(), plain[0, 3:5].numpy(), atol=1e-5)
    np.testing.assert_allclose(steered[1].numpy(), plain[1].numpy(), atol=1e-6)  # NaN row
    near = torch.tensor(target[None])  # a focus the wrist sees keeps the wrist on it
    kept, _ = geometry([m[:1] for m in maps], torch.zeros(1, 4), state[:1], focus=near)
    np.testing.assert_allclose(kept[0, 3:5].numpy(), plain[0, 3:5].numpy(), atol=0.05)


def test_focus_bias_is_zero_without_a_point_in_the_image():
    logits = torch.zeros(3, 64)
    bias = focus_bias(logits, torch.tensor([[0.3, 0.6], [float("nan")] * 2, [1.2, 0.5]]), 0.05)
    assert bias[0].argmax().item() == 4 * 8 + 2  # row 0.6 -> cell 4, column 0.3 -> cell 2
    assert bias[0].max() > -1.0 and bias[0].min() < -50.0
    assert (bias[1:] == 0).all()


def geometry_config(calibration, **changes):
    settings = {"views": VIEWS, "fusion": {"kind": "film"}, "geometry": {"cameras": calibration},
                "aux": {"grounding_weight": 1.0, "grounding_classes": ("red cube",)}}
    return tiny_config(**{**settings, **changes})


def test_policy_with_geometry_learns_the_height_and_round_trips(close_to_target, tmp_path):
    _, calibration, obs, info = close_to_target
    torch.manual_seed(0)
    policy = VLAPolicy(geometry_config(calibration))
    batch = {"image": obs["image"][None].repeat(8, 0),
             "wrist_image": obs["wrist_image"][None].repeat(8, 0),
             "state": obs["state"][None].repeat(8, 0), "instruction": [obs["instruction"]] * 8,
             "action": np.zeros((8, 7), np.float32),
             "target_pos": np.asarray(info["target_pos"], np.float32)[None].repeat(8, 0)}
    optimiser = torch.optim.Adam(policy.parameters(), lr=3e-3)
    errors = []
    for _ in range(60):
        loss, metrics = policy(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        errors.append(metrics["target_height_error_m"])
    assert errors[-1] < 0.2 * errors[0] and errors[-1] < 0.005
    obs_batch = {k: v for k, v in batch.items() if k not in ("action", "target_pos")}
    loaded = VLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "p"))
    assert loaded.config.geometry.cameras == calibration
    np.testing.assert_array_equal(loaded.predict(obs_batch), policy.predict(obs_batch))
    # the gripper's pose reaches the action through the geometry (not only the state MLP)
    moved = {**obs_batch, "state": obs_batch["state"].copy()}
    moved["state"][:, list(EE_POS)] += 0.05
    assert not np.allclose(policy.predict(moved), policy.predict(obs_batch))


def test_target_candidates_lie_on_the_main_maps_blobs_and_a_focus_steers_the_policy(
        close_to_target):
    _, calibration, obs, _ = close_to_target
    torch.manual_seed(0)
    policy = VLAPolicy(geometry_config(calibration)).eval()
    batch = {"image": obs["image"][None].repeat(2, 0),
             "wrist_image": obs["wrist_image"][None].repeat(2, 0),
             "state": obs["state"][None].repeat(2, 0), "instruction": [obs["instruction"]] * 2}
    candidates = policy.target_candidates(batch, 3)
    assert candidates.shape == (2, 3, 3) and np.isfinite(candidates).all()
    with torch.no_grad():
        out = policy.features(policy.preprocess(batch))
    pixels, _ = map_peaks(out.target_map, 3)
    np.testing.assert_allclose(candidates[0, :, 2], out.target_height[0].item(), atol=1e-5)
    state = torch.tensor(batch["state"][:1]).repeat(3, 1)
    seen = policy.trunk.geometry.project(torch.tensor(candidates[0]), state)["image"]
    np.testing.assert_allclose(seen.numpy(), pixels[0].numpy(), atol=1e-4)
    plain = policy.predict(batch)
    assert not np.allclose(policy.predict({**batch, FOCUS: candidates[:, 2]}), plain)
    none = {**batch, FOCUS: np.full((2, 3), np.nan, np.float32)}
    np.testing.assert_array_equal(policy.predict(none), plain)
    with pytest.raises(ObservationError, match="focus_point"):
        policy.predict({**batch, FOCUS: candidates[:, 0, :2]})
    flat = VLAPolicy(tiny_config(views=VIEWS)).eval()
    with pytest.raises(ObservationError, match="no target geometry"):
        flat.predict({**batch, FOCUS: candidates[:, 0]})
    with pytest.raises(ValueError, match="target geometry"):
        flat.target_candidates(batch, 2)


def test_geometry_config_is_checked(close_to_target):
    _, calibration, _, _ = close_to_target
    with pytest.raises(ValueError, match="keys"):
        geometry_config({"image": {"pos": [0, 0, 1]}})
    with pytest.raises(ValueError, match="frame must be one of"):
        geometry_config({"image": {**calibration["image"], "frame": "base"}})
    with pytest.raises(ValueError, match="rot"):
        geometry_config({"image": {**calibration["image"], "rot": [1, 0, 0]}})
    with pytest.raises(ValueError, match="does not read"):
        tiny_config(fusion={"kind": "film"}, geometry={"cameras": calibration},
                    aux={"grounding_weight": 1.0, "grounding_classes": ("red cube",)})
    with pytest.raises(ValueError, match="fusion.kind='film'"):
        geometry_config(calibration, fusion={"kind": "concat"})
    with pytest.raises(ValueError, match="arm_ee_delta"):
        geometry_config(calibration, action="base_velocity", state_dim=5)
    with pytest.raises(ValueError, match="grounding_weight"):
        tiny_config(views=VIEWS, fusion={"kind": "film"}, geometry={"cameras": calibration})


def test_calibration_needs_a_tabletop_env():
    env = gym.make("vla_gym/NavGoTo-v0", image_size=32)
    try:
        with pytest.raises(ValueError, match="tabletop env"):
            calibration_from_env(env, ("image",))
    finally:
        env.close()
    tabletop = gym.make(PICK, image_size=32)
    try:
        assert set(calibration_from_env(tabletop, ("image",))) == {"image"}
        assert mujoco.mj_name2id(tabletop.unwrapped.model, mujoco.mjtObj.mjOBJ_CAMERA,
                                 "wrist") >= 0
    finally:
        tabletop.close()


@pytest.mark.parametrize("images_to_head", [True, False])
def test_a_geometry_only_head_leaves_perception_to_its_own_losses(close_to_target,
                                                                  images_to_head):
    _, calibration, obs, info = close_to_target
    torch.manual_seed(0)
    config = geometry_config(calibration)
    config = config.replace(geometry={"image_features_to_head": images_to_head})
    policy = VLAPolicy(config)
    batch = {"image": obs["image"][None].repeat(4, 0),
             "wrist_image": obs["wrist_image"][None].repeat(4, 0),
             "state": obs["state"][None].repeat(4, 0), "instruction": [obs["instruction"]] * 4}
    out = policy.features(policy.preprocess(batch))
    action = policy.action_heads[0].predict(out.features, policy.normalizer)
    vision = list(policy.trunk.vision.parameters())
    grads = torch.autograd.grad(action.sum(), vision, allow_unused=True)
    reaches_vision = any(g is not None and g.abs().sum() > 0 for g in grads)
    assert reaches_vision == images_to_head
    expected = (config.fusion.dim * 2 if images_to_head else 0) + 7 + config.hidden
    assert policy.trunk.out[0][0].in_features == expected
