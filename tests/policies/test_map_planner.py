"""The map-and-plan navigation policy: camera geometry, planning features, the policy
contract, checkpoints, and cloning the controller behind perfect perception."""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import vla_gym  # noqa: E402,F401
from vla_gym.envs.language import COLOURS  # noqa: E402
from vla_gym.envs.navigation.env import GOAL_RADIUS  # noqa: E402
from vla_gym.envs.rendering import CameraProjection  # noqa: E402
from vla_gym.experts.navigation import LOOKAHEAD_CELLS, NavExpert  # noqa: E402
from vla_gym.policies import load_batch_policy  # noqa: E402
from vla_gym.policies.checkpoint import CheckpointError  # noqa: E402
from vla_gym.policies.map_planner import (  # noqa: E402
    FEATURES,
    MapPlannerConfig,
    MapPlannerPolicy,
    Perceived,
    camera_calibration,
    project_points,
    route_features,
)
from vla_gym.training.map_planner import (  # noqa: E402
    MapDemos,
    MapPlannerTraining,
    fit_head,
    true_features,
)

NAV = "vla_gym/NavGoTo-v0"


@pytest.fixture(scope="module")
def nav_env():
    env = gym.make(NAV, cameras=("main", "top"))
    env.reset(seed=3)
    yield env
    env.close()


@pytest.fixture(scope="module")
def config(nav_env) -> MapPlannerConfig:
    base = nav_env.unwrapped
    return MapPlannerConfig(vocabulary=["go", "to", "the", "red", "ball"],
                            camera=camera_calibration(base.model, base.data, "top"),
                            goal_radius=GOAL_RADIUS, lookahead_cells=LOOKAHEAD_CELLS)


def test_projection_matches_the_env_camera(nav_env, config):
    base = nav_env.unwrapped
    project = CameraProjection(base.model, "top")
    points = np.random.default_rng(0).uniform([-2.5, -2.5, 0.0], [2.5, 2.5, 0.5], (20, 3))
    ours = project_points(config.camera, points)
    theirs = np.stack([project(base.data, p) for p in points])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


def test_warp_puts_each_landmark_on_its_planning_cell(nav_env, config):
    """The resampled overhead image samples each fine cell where the env's own camera
    projection puts it, and shows a landmark, not floor, at each coloured landmark's cell."""
    policy = MapPlannerPolicy(config)
    base = nav_env.unwrapped
    project = CameraProjection(base.model, "top")
    up = config.upsample
    step = config.resolution / up
    for seed in range(3):
        obs, _ = nav_env.reset(seed=seed)
        image = obs["top_image"].astype(np.float32) / 255
        warped = policy.warp(torch.as_tensor(obs["top_image"][None]))[0].numpy()
        size = image.shape[0]
        cells = np.random.default_rng(seed).integers(0, warped.shape[1], (200, 2))
        for row, col in cells:
            x = -config.arena_half + (col + 0.5) * step
            y = -config.arena_half + (row + 0.5) * step
            u, v = project(base.data, np.array([x, y, config.sample_height])) * size - 0.5
            c0, r0 = int(np.floor(u)), int(np.floor(v))
            fu, fv = u - c0, v - r0
            pixel = sum(weight * image[min(max(r, 0), size - 1), min(max(c, 0), size - 1)]
                        for r, c, weight in ((r0, c0, (1 - fu) * (1 - fv)),
                                             (r0, c0 + 1, fu * (1 - fv)),
                                             (r0 + 1, c0, (1 - fu) * fv),
                                             (r0 + 1, c0 + 1, fu * fv)))
            np.testing.assert_allclose(warped[:, row, col], pixel, atol=1e-4)
        floor = np.median(warped.reshape(3, -1), axis=1)
        for landmark in base.world.landmarks:
            rgb = np.asarray(COLOURS[landmark.colour][:3])
            if np.ptp(rgb) < 0.3:  # white, grey and black can look like the lit floor
                continue
            col, row = ((np.asarray(landmark.xy) + config.arena_half) / step).astype(int)
            assert np.abs(warped[:, row, col] - floor).max() > 0.15, landmark


def test_route_features_follow_the_expert_plan(nav_env, config):
    """With the true map, pose and target, the look-ahead point is the expert's."""
    base = nav_env.unwrapped
    expert = NavExpert(base)
    obs, _ = nav_env.reset(seed=5)
    expert.reset()
    for _ in range(15):
        x, y, yaw = base.sim.robot.world_pose(base.data)
        seen = Perceived(base.grid.blocked, (x, y, yaw), tuple(base.episode.target.xy))
        features = route_features(seen, obs["state"], config)
        from vla_gym.envs.navigation.grid import downhill_path

        ahead = downhill_path(base.grid, expert._plan, x, y, LOOKAHEAD_CELLS)[-1]
        c, s = math.cos(yaw), math.sin(yaw)
        dx, dy = ahead[0] - x, ahead[1] - y
        np.testing.assert_allclose(features[:2], [c * dx + s * dy, -s * dx + c * dy],
                                   atol=1e-5)
        assert features.shape == (len(FEATURES),)
        assert features[4] == pytest.approx(math.dist((x, y), base.episode.target.xy), abs=1e-5)
        obs, *_ = nav_env.step(expert.act(obs))


def test_predict_contract_and_checkpoint_round_trip(nav_env, config, tmp_path):
    policy = MapPlannerPolicy(config).eval()
    obs, _ = nav_env.reset(seed=1)
    batch = {"top_image": np.stack([obs["top_image"]] * 3),
             "instruction": ("go to the red ball",) * 3, "state": np.stack([obs["state"]] * 3)}
    actions = policy.predict(batch)
    assert actions.shape == (3, 2) and actions.dtype == np.float32
    assert np.all(np.abs(actions) <= 1.0)
    np.testing.assert_allclose(policy.act(obs), actions[0], atol=1e-3)  # batch-size numerics

    policy.save_pretrained(tmp_path / "policy")
    loaded = load_batch_policy(tmp_path / "policy")
    assert isinstance(loaded, MapPlannerPolicy)
    np.testing.assert_array_equal(loaded(batch, None), actions)
    with pytest.raises(ValueError, match="CPU only"):
        load_batch_policy(tmp_path / "policy", int8=True)


def test_bad_input_and_bad_checkpoints(config, tmp_path):
    policy = MapPlannerPolicy(config)
    with pytest.raises(ValueError, match="top_image"):
        policy.predict({"image": np.zeros((1, 96, 96, 3), np.uint8), "instruction": ["x"],
                        "state": np.zeros((1, 5), np.float32)})
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        policy.predict({"top_image": np.zeros((96, 96, 3), np.uint8), "instruction": ["x"],
                        "state": np.zeros((1, 5), np.float32)})
    root = policy.save_pretrained(tmp_path / "p")
    data = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**data, "colour": 1}))
    with pytest.raises(CheckpointError, match="unknown MapPlannerConfig field"):
        MapPlannerPolicy.from_pretrained(root)
    (root / "config.json").write_text(json.dumps({**data, "camera": {**data["camera"],
                                                                      "frame": "end_effector"}}))
    with pytest.raises(CheckpointError, match="fixed in the world"):
        MapPlannerPolicy.from_pretrained(root)
    (root / "config.json").write_text(json.dumps({**data, "camera": {"pos": [0, 0, 1]}}))
    with pytest.raises(CheckpointError, match="must be an object with keys"):
        MapPlannerPolicy.from_pretrained(root)
    (root / "config.json").write_text(json.dumps({**data, "channels": 8}))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        MapPlannerPolicy.from_pretrained(root)


class _TruePerception:
    """Perfect perception read from the simulator, standing in for the learned maps."""

    def __init__(self, env) -> None:
        self.base = env.unwrapped

    def __call__(self, images, instructions, states, memories):
        base = self.base
        return [Perceived(base.grid.blocked, tuple(base.sim.robot.world_pose(base.data)),
                          tuple(base.episode.target.xy))]


@pytest.mark.slow
def test_cloned_controller_reaches_targets_with_perfect_perception(config):
    """The controller cloned from 30 demos' features drives to the target through other
    rooms when perception is right; a random policy does not."""
    demos = MapDemos.from_expert(NAV, 30, seed=0)
    rows, features = true_features(demos, config)
    policy = MapPlannerPolicy(config)
    loss = fit_head(policy, features, demos.actions[rows], MapPlannerTraining(head_steps=1500))
    assert loss < 0.2
    env = gym.make(NAV, cameras=("main", "top"))
    policy.track = _TruePerception(env)  # type: ignore[method-assign]
    successes = 0
    for j in range(8):
        obs, _ = env.reset(seed=100_000 + j)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(policy.act(obs))
            done = terminated or truncated
        successes += bool(info["is_success"])
    env.close()
    assert successes >= 6, successes


def test_odometry_anchor_fuses_noisy_poses_into_the_true_one():
    """Odometry counts from an unknown start pose; noisy absolute poses pin that start down,
    exactly without noise and far better than one frame with it."""
    from vla_gym.policies.map_planner import OdometryAnchor, is_first_frame

    rng = np.random.default_rng(0)
    x0, y0, yaw0 = 1.2, -0.7, 2.9
    c, s = math.cos(yaw0), math.sin(yaw0)
    odometry = np.cumsum(rng.normal(0, 0.05, (60, 3)), axis=0)
    odometry[0] = 0.0
    assert is_first_frame(odometry[0]) and not is_first_frame(odometry[1])
    truth = [(x0 + c * ox - s * oy, y0 + s * ox + c * oy, yaw0 + oyaw)
             for ox, oy, oyaw in odometry]
    exact, noisy = OdometryAnchor(), OdometryAnchor()
    for pose, odo in zip(truth, odometry, strict=True):
        fused = exact.update(pose, odo)
        np.testing.assert_allclose(fused[:2], pose[:2], atol=1e-9)
        assert math.remainder(fused[2] - pose[2], 2 * math.pi) == pytest.approx(0, abs=1e-9)
        seen = (pose[0] + rng.normal(0, 0.05), pose[1] + rng.normal(0, 0.05),
                pose[2] + rng.normal(0, 0.3))
        fused = noisy.update(seen, odo)
    assert abs(math.remainder(fused[2] - truth[-1][2], 2 * math.pi)) < 0.12  # one frame: 0.3
    assert math.dist(fused[:2], truth[-1][:2]) < 0.05


def test_episode_memory_steadies_a_wandering_target_map():
    """Each frame's target map peaks on a decoy somewhere else, above the true cell; the
    episode's mean log-probabilities find the true cell within a few frames. One frame passes
    through unchanged, and without map memory every frame stands alone."""
    from vla_gym.policies.map_planner import EpisodeMemory, expected_xy

    rng = np.random.default_rng(0)
    n, true_cell = 50, (30, 12)
    memory, alone = EpisodeMemory(), EpisodeMemory(maps=False)
    errors = []
    truth = np.array([-2.5 + 0.1 * (true_cell[1] + 0.5), -2.5 + 0.1 * (true_cell[0] + 0.5)])
    for frame in range(8):
        logits = torch.full((n, n), -10.0)  # a trained map: sharp peaks on a low floor
        logits[true_cell] = 8.0
        logits[tuple(rng.integers(0, n, 2))] = 9.0  # a decoy, somewhere new each frame
        logp = torch.log_softmax(logits.flatten(), -1).view(n, n)
        blocked = torch.as_tensor(rng.normal(size=(n, n)), dtype=torch.float32)
        target, mean_blocked = memory.remember(logp, blocked)
        assert alone.remember(logp, blocked)[0] is logp
        if frame == 0:
            torch.testing.assert_close(target, logp)
            torch.testing.assert_close(mean_blocked, blocked)
        xy = expected_xy(target[None], 2.5, 0.1)[0].numpy()
        errors.append(float(np.linalg.norm(xy - truth)))
    one_frame = expected_xy(logp[None], 2.5, 0.1)[0].numpy()
    assert np.linalg.norm(one_frame - truth) > 0.3  # a frame alone is pulled to its decoy
    assert errors[-1] < 0.1 < errors[0]


def test_policy_memory_restarts_on_each_episode(nav_env, config):
    """Within an episode the policy plans on its memory; a first frame (odometry zero)
    starts a new one, so replaying an episode's start gives the first answer again, and
    the first frame's maps are that frame's own."""
    policy = MapPlannerPolicy(config).eval()
    first, _ = nav_env.reset(seed=2)
    moved, *_ = nav_env.step(np.array([0.8, 0.5], np.float32))
    assert np.any(moved["state"][:3])

    def batch(obs):
        return {"top_image": obs["top_image"][None], "instruction": [obs["instruction"]],
                "state": obs["state"][None]}

    start = policy.predict(batch(first))
    alone = policy.perceive(first["top_image"][None], [first["instruction"]])[0]
    seen = policy.track(first["top_image"][None], [first["instruction"]],
                        first["state"][None], [policy.new_memory()])[0]
    np.testing.assert_allclose(seen.target, alone.target, atol=1e-5)
    np.testing.assert_array_equal(seen.blocked, alone.blocked)
    policy.predict(batch(moved))
    assert policy._memories[0].frames == 2
    np.testing.assert_array_equal(policy.predict(batch(first)), start)
    assert policy._memories[0].frames == 1


def test_odometry_anchor_reads_the_heading_off_the_path():
    """Heading readings all 25 degrees off (alike errors, as a parked base's frames are) and
    positions a few centimetres off: once the base has driven 1.5 m, laying the perceived
    path onto the odometry's finds the heading within 2 degrees; heading readings alone
    (position_weight 0) stay 25 degrees off."""
    from vla_gym.policies.map_planner import OdometryAnchor

    rng = np.random.default_rng(1)
    x0, y0, yaw0 = -1.0, 0.5, 0.7
    c, s = math.cos(yaw0), math.sin(yaw0)
    steps = np.linspace(0, 1.5, 40)
    odometry = np.stack([steps, 0.3 * steps**2, np.arctan(0.6 * steps)], -1)
    path, alone = OdometryAnchor(80.0), OdometryAnchor(0.0)
    for ox, oy, oyaw in odometry:
        true_yaw = yaw0 + oyaw
        seen = (x0 + c * ox - s * oy + rng.normal(0, 0.03),
                y0 + s * ox + c * oy + rng.normal(0, 0.03), true_yaw + math.radians(25))
        with_path = path.update(seen, np.array([ox, oy, oyaw]))
        readings_only = alone.update(seen, np.array([ox, oy, oyaw]))

    def error_deg(yaw: float) -> float:
        return abs(math.degrees(math.remainder(yaw - true_yaw, 2 * math.pi)))

    assert error_deg(with_path[2]) < 2.0
    assert error_deg(readings_only[2]) == pytest.approx(25.0, abs=0.1)
    assert math.dist(with_path[:2], (x0 + c * ox - s * oy, y0 + s * ox + c * oy)) < 0.03
