"""Behaviour of every navigation env id: API conformance, determinism, language, bad input."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import vla_gym
from vla_gym.envs.navigation.language import (
    NAV_HELD_OUT_COMBOS,
    TEST_TEMPLATES,
    TRAIN_TEMPLATES,
    resolve,
)
from vla_gym.envs.navigation.task import SUCCESS_RADIUS, evaluate
from vla_gym.types import BASE_VELOCITY

NAV_IDS = [env_id for env_id in vla_gym.ENV_TABLE if "/Nav" in env_id]


def test_three_nav_ids_registered():
    assert NAV_IDS == ["vla_gym/NavGoTo-v0", "vla_gym/NavRelative-v0", "vla_gym/NavMultiTask-v0"]


@pytest.mark.parametrize("env_id", NAV_IDS)
@pytest.mark.parametrize("obs_mode", ["rgb", "state"])
def test_check_env(env_id, obs_mode):
    env = gym.make(env_id, obs_mode=obs_mode)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=2)
    expected = {"instruction", "state", "image"} if obs_mode == "rgb" else {
        "instruction", "state", "objects"}
    assert set(obs) == expected
    assert env.unwrapped.action_contract is BASE_VELOCITY
    env.close()


def _rollout(env_id, seed, actions, **kwargs):
    env = gym.make(env_id, **kwargs)
    obs, info = env.reset(seed=seed)
    trace = [(obs["image"].tobytes(), obs["state"].tobytes(), obs["instruction"])]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs["image"].tobytes(), obs["state"].tobytes(), reward, info["collisions"]))
        if terminated or truncated:
            break
    env.close()
    return trace


@pytest.mark.parametrize("env_id", NAV_IDS)
def test_seeded_determinism_bit_identical(env_id):
    actions = np.random.default_rng(0).uniform(-1, 1, (40, 2)).astype(np.float32)
    first = _rollout(env_id, 77, actions)
    assert first == _rollout(env_id, 77, actions)
    assert _rollout(env_id, 78, actions[:1])[0] != first[0]


def test_egocentric_image_and_odometry_state():
    env = gym.make("vla_gym/NavGoTo-v0", cameras=("main", "top"))
    obs, info = env.reset(seed=5)
    assert obs["image"].shape == (96, 96, 3) and obs["image"].dtype == np.uint8
    assert obs["image"].std() > 5 and obs["top_image"].std() > 5
    assert not np.array_equal(obs["image"], obs["top_image"])
    # Odometry starts at the origin of its own frame, whatever the world pose.
    np.testing.assert_array_equal(obs["state"], np.zeros(5, np.float32))
    for _ in range(30):
        obs, *_ = env.step(np.array([1.0, 0.0], np.float32))
    x, y, yaw, v, omega = obs["state"]
    assert x > 0.3 and abs(y) < 0.05 and abs(yaw) < 0.05  # drove straight ahead
    assert v == pytest.approx(BASE_VELOCITY.scale[0], abs=0.02) and abs(omega) < 0.01
    env.close()


def test_acceleration_limits_shape_the_response():
    env = gym.make("vla_gym/NavGoTo-v0", obs_mode="state")
    env.reset(seed=1)
    base = env.unwrapped
    linear, angular = base.accel_limits
    assert (linear, angular) == BASE_VELOCITY.rate_limit
    obs, *_ = env.step(np.array([1.0, 1.0], np.float32))
    # One step of dt can change speed by at most accel * dt, not jump to the maximum.
    assert obs["state"][3] <= linear * base.dt + 1e-3
    assert obs["state"][4] <= angular * base.dt + 1e-3
    env.close()


@pytest.mark.parametrize("env_id", NAV_IDS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_instruction_resolves_to_exactly_the_target(env_id, split):
    env = gym.make(env_id, obs_mode="state", instruction_split=split)
    templates = TRAIN_TEMPLATES if split == "train" else TEST_TEMPLATES
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        world = env.unwrapped.world
        matches = resolve(obs["instruction"], world.landmarks, world.start_room,
                          len(world.rooms.rooms))
        assert [m.name for m in matches] == [info["target"]], obs["instruction"]
        assert any(obs["instruction"].startswith(t.split("{")[0]) for t in templates)
        pairs = {(o.colour, o.shape) for o in world.landmarks}
        assert len(pairs) == len(world.landmarks)
        if split == "train":
            assert not pairs & NAV_HELD_OUT_COMBOS
    env.close()


def test_relative_instructions_use_relations_and_need_them():
    env = gym.make("vla_gym/NavRelative-v0", obs_mode="state")
    kinds = set()
    for seed in range(60):
        obs, info = env.reset(seed=seed)
        text = obs["instruction"]
        kind = next(k for k in ("next to", "other room", "room with") if k in text)
        kinds.add(kind)
        world = env.unwrapped.world
        same_shape = [o for o in world.landmarks if o.shape == info["target_shape"]]
        assert len(same_shape) >= 2, "the relation must be what singles the target out"
    assert kinds == {"next to", "other room", "room with"}
    env.close()


def test_counterfactual_target_keeps_the_world_and_renames_the_goal():
    env = gym.make("vla_gym/NavMultiTask-v0", obs_mode="state")
    for seed in range(8):
        obs, info = env.reset(seed=seed)
        world = env.unwrapped.world
        for other in env.unwrapped.counterfactual_targets():
            try:
                obs2, info2 = env.reset(seed=seed, options={"target": other})
            except ValueError as error:
                assert "cannot be reached" in str(error)
                continue
            assert env.unwrapped.world == world  # same seed, same world
            assert info2["target"] == other != info["target"]
            found = resolve(obs2["instruction"], world.landmarks, world.start_room,
                            len(world.rooms.rooms))
            assert [o.name for o in found] == [other]
            break
    env.close()


def test_multitask_draws_both_families():
    env = gym.make("vla_gym/NavMultiTask-v0", obs_mode="state")
    families = {env.reset(seed=s)[1]["task"] for s in range(20)}
    assert families == {"goto", "relative"}
    env.close()


def test_reset_options_target_instruction_and_unknown_keys():
    env = gym.make("vla_gym/NavGoTo-v0", obs_mode="state")
    _, info = env.reset(seed=3)
    _, again = env.reset(seed=3, options={"target": info["target"]})
    assert again["target"] == info["target"]
    obs, _ = env.reset(seed=3, options={"instruction": "go to the tallest thing"})
    assert obs["instruction"] == "go to the tallest thing"
    with pytest.raises(ValueError, match="valid options"):
        env.reset(options={"colour": "red"})
    with pytest.raises(ValueError, match="not in this world; valid"):
        env.reset(seed=0, options={"target": "plaid ball"})
    with pytest.raises(ValueError, match="one of"):
        env.reset(options={"task": "fly"})
    env.close()


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((2, 1)), [np.nan, 0], [0, np.inf]])
def test_bad_actions_raise_naming_the_shape(bad):
    env = gym.make("vla_gym/NavGoTo-v0", obs_mode="state")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"\(2,\)|finite"):
        env.step(bad)
    env.close()


def test_out_of_range_actions_are_clipped():
    def drive(action):
        env = gym.make("vla_gym/NavGoTo-v0", obs_mode="state")
        env.reset(seed=4)
        for _ in range(5):
            obs, *_ = env.step(np.array(action, np.float32))
        env.close()
        return obs["state"]

    np.testing.assert_array_equal(drive([7.0, -3.0]), drive([1.0, -1.0]))


def test_unknown_kwargs_and_bad_ranges_list_valid_choices():
    with pytest.raises(TypeError, match="valid:.*num_rooms"):
        gym.make("vla_gym/NavGoTo-v0", rooms=2)
    with pytest.raises(ValueError, match="num_rooms"):
        gym.make("vla_gym/NavGoTo-v0", num_rooms=(0, 9))
    with pytest.raises(ValueError, match="camera"):
        gym.make("vla_gym/NavGoTo-v0", cameras=("main", "wrist"))
    with pytest.raises(ValueError, match="task"):
        gym.make("vla_gym/NavGoTo-v0", tasks="dance")


def test_wedged_against_a_wall_counts_collisions_without_hanging():
    env = gym.make("vla_gym/NavGoTo-v0", obs_mode="state", num_rooms=(1, 1),
                   num_furniture=(0, 0))
    env.reset(seed=9)
    for _ in range(400):  # long enough to cross the arena and grind into a wall
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0.0], np.float32))
        if truncated:
            break
    assert info["collisions"] >= 1 and info["reward_collision"] == 1.0
    assert not info["physics_diverged"]
    assert np.all(np.abs(env.unwrapped.sim.robot.world_pose(env.unwrapped.data)[:2]) < 2.5)
    assert abs(obs["state"][3]) < 0.1  # the wall, not the controller, holds it still
    env.close()


def test_success_needs_near_facing_and_stopped():
    from vla_gym.envs.navigation.language import Landmark

    target = Landmark("ball0", "red", "ball", (1.0, 0.0), 0)
    assert evaluate(np.array([0.5, 0.0, 0.0]), (0.0, 0.0), target)["success"]
    assert not evaluate(np.array([0.5, 0.0, math.pi]), (0.0, 0.0), target)["success"]
    assert not evaluate(np.array([0.5, 0.0, 0.0]), (0.2, 0.0), target)["success"]
    far = 1.0 - SUCCESS_RADIUS - 0.05
    assert not evaluate(np.array([far, 0.0, 0.0]), (0.0, 0.0), target)["success"]


def test_info_carries_target_and_reward_terms():
    env = gym.make("vla_gym/NavGoTo-v0", obs_mode="state")
    _, info = env.reset(seed=6)
    world = env.unwrapped.world
    target = world.landmark(info["target"])
    assert info["target_pos_world"][:2] == pytest.approx(target.xy)
    # target_pos is in the odometry frame: at the start pose it is the target seen from the base.
    x0, y0, yaw0 = world.start
    dx, dy = target.xy[0] - x0, target.xy[1] - y0
    assert np.hypot(*info["target_pos"][:2]) == pytest.approx(np.hypot(dx, dy))
    bearing = np.arctan2(info["target_pos"][1], info["target_pos"][0])
    expected = (np.arctan2(dy, dx) - yaw0 + np.pi) % (2 * np.pi) - np.pi
    assert bearing == pytest.approx(expected)
    _, reward, *_, info = env.step(np.array([0.5, 0.0], np.float32))
    terms = {k for k in info if k.startswith("reward_")}
    assert terms == {"reward_progress", "reward_facing", "reward_collision", "reward_success"}
    weights = env.unwrapped.reward_weights
    assert reward == pytest.approx(sum(weights[k[7:]] * info[k] for k in terms))
    env.close()


def test_render_top_view_and_high_quality():
    env = gym.make("vla_gym/NavGoTo-v0", render_mode="rgb_array", render_size=64,
                   render_quality="high", image_size=32)
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.std() > 5
    assert obs["image"].shape == (32, 32, 3)
    env.close()


def test_parked_pool_bodies_are_not_drawn():
    from vla_gym.envs.rendering import HIDDEN_GEOM_GROUP

    env = gym.make("vla_gym/NavGoTo-v0", image_size=32)
    env.reset(seed=0)
    sim = env.unwrapped.sim
    used = ({f"wall{i}" for i in range(len(sim.world.walls))}
            | {f"furniture{i}" for i in range(len(sim.world.furniture))}
            | {obj.slot for obj in sim.world.landmarks})
    parked = set(sim.mocap) - used
    assert used and parked
    for name, geoms in sim.body_geoms.items():
        groups = env.unwrapped.model.geom_group[geoms]
        if name in used:
            assert (groups == sim.compiled_groups[geoms]).all()
        else:
            assert (groups == HIDDEN_GEOM_GROUP).all()
    env.close()
