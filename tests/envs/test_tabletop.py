"""Behaviour of every tabletop env id: API conformance, determinism, bad input, info."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import vla_gym
from vla_gym.envs.language import parse_instruction, target_landmark
from vla_gym.envs.language.vocabulary import COLOURS
from vla_gym.types import landmark_label, pixel_label

TABLETOP_IDS = [env_id for env_id in vla_gym.ENV_TABLE if "Tabletop" in env_id]


@pytest.fixture(scope="module", params=TABLETOP_IDS)
def env(request):
    env = gym.make(request.param)
    yield env
    env.close()


@pytest.mark.parametrize("env_id", TABLETOP_IDS)
def test_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", TABLETOP_IDS)
def test_check_env_state_mode(env_id):
    env = gym.make(env_id, obs_mode="state")
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    assert set(obs) == {"instruction", "state", "objects"}
    assert obs["objects"][:, -1].sum() >= 2  # at least two objects present
    env.close()


def _rollout(env_id, seed, actions, **kwargs):
    env = gym.make(env_id, **kwargs)
    obs, info = env.reset(seed=seed)
    trace = [(obs["image"].tobytes(), obs["state"].tobytes(), obs["instruction"])]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs["image"].tobytes(), obs["state"].tobytes(), reward))
        if terminated or truncated:
            break
    env.close()
    return trace


@pytest.mark.parametrize("env_id", TABLETOP_IDS)
def test_seeded_determinism_bit_identical(env_id):
    actions = np.random.default_rng(0).uniform(-1, 1, (30, 7)).astype(np.float32)
    first = _rollout(env_id, 123, actions)
    second = _rollout(env_id, 123, actions)
    assert first == second
    other = _rollout(env_id, 124, actions[:1])
    assert other[0] != first[0]


def test_image_observation_shape_and_content(env):
    obs, info = env.reset(seed=3)
    assert obs["image"].shape == (96, 96, 3) and obs["image"].dtype == np.uint8
    assert obs["image"].std() > 5  # a real rendered scene, not a blank frame
    assert obs["state"].shape == (21,) and obs["state"].dtype == np.float32
    assert env.observation_space.contains(obs)


def test_info_names_the_true_target(env):
    for seed in range(10):
        obs, info = env.reset(seed=seed)
        scene = env.unwrapped.sim.layout.scene_objects()
        parsed = parse_instruction(obs["instruction"], scene)
        assert parsed.task == info["task"]
        assert [o.name for o in parsed.target] == [env.unwrapped.episode.target.slot]
        assert info["target"] == env.unwrapped.episode.target.name
        np.testing.assert_allclose(info["target_pos"][:2], env.unwrapped.episode.target.xy,
                                   atol=1e-3)
        assert info["is_success"] is False
        assert any(key.startswith("reward_") for key in info)


def _shows_target(image: np.ndarray, pixel: np.ndarray, colour_name: str) -> bool:
    """The 3x3 patch at ``pixel`` has a colour nearer the target's than the table's."""
    column, row = (pixel * image.shape[0]).astype(int)
    patch = image[row - 1:row + 2, column - 1:column + 2].reshape(-1, 3).astype(float)
    colour = np.asarray(COLOURS[colour_name][:3]) * 255
    # the rendered colour is shaded, so compare against the table's (the commonest) colour
    table = np.median(image.reshape(-1, 3).astype(float), axis=0)
    return bool(np.linalg.norm(patch - colour, axis=1).min() < np.linalg.norm(table - colour))


def test_target_pixel_points_at_the_target_in_the_image(env):
    for seed in range(5):
        obs, info = env.reset(seed=seed)
        colour = env.unwrapped.episode.target.colour
        assert _shows_target(obs["image"], info["target_pixel"], colour), (seed, info["target"])
        assert "wrist_target_pixel" not in info  # no wrist camera, no wrist label


def test_wrist_target_pixel_points_at_the_target_in_the_wrist_image():
    env = gym.make("vla_gym/TabletopPick-v0", cameras=("main", "wrist"), image_size=64)
    shown = 0
    for seed in range(8):
        obs, info = env.reset(seed=seed)
        pixel = info["wrist_target_pixel"]
        assert pixel.shape == (2,) and not np.allclose(pixel, info["target_pixel"])
        if ((pixel > 0.05) & (pixel < 0.95)).all():
            shown += 1
            assert _shows_target(obs["wrist_image"], pixel, env.unwrapped.episode.target.colour)
    assert shown >= 6  # the wrist camera sees most of the table from the home pose
    env.close()


def test_landmark_pixel_is_where_the_relation_s_landmark_is():
    """A relational instruction's landmark, in every camera, is where that object is as a
    target of the same scene; a plain instruction's landmark is the target itself."""
    env = gym.make("vla_gym/TabletopPick-v0", cameras=("main", "wrist"), image_size=32)
    base, relational, plain = env.unwrapped, 0, 0
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        scene = base.sim.layout.scene_objects()
        landmark = target_landmark(obs["instruction"], base.episode.target.scene_object(), scene)
        if landmark is None:
            plain += 1
            for view in ("image", "wrist_image"):
                np.testing.assert_array_equal(info[landmark_label(view)], info[pixel_label(view)])
            continue
        # The landmark's own pixels: the same scene instructed to pick the landmark up (a
        # plate or bowl cannot be Pick's target, so it has no such label to compare with).
        landmark_name = base.sim.layout.get(landmark.name).name
        if landmark_name not in base.counterfactual_targets():
            continue
        relational += 1
        _, as_target = env.reset(seed=seed, options={"target": landmark_name})
        for view in ("image", "wrist_image"):
            np.testing.assert_allclose(info[landmark_label(view)], as_target[pixel_label(view)])
            assert not np.allclose(info[landmark_label(view)], info[pixel_label(view)])
    assert relational >= 5 and plain >= 5
    env.close()


@pytest.mark.parametrize("bad", [np.zeros(6), np.zeros((7, 1)), [np.nan] * 7, [np.inf] * 7])
def test_bad_actions_raise_with_expected_shape(env, bad):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"\(7,\)|finite"):
        env.step(bad)


def test_out_of_range_actions_are_clipped(env):
    env.reset(seed=0)
    big = env.step(np.full(7, 50.0))[0]["state"]
    env.reset(seed=0)
    one = env.step(np.ones(7))[0]["state"]
    np.testing.assert_array_equal(big, one)
    # Finite values so large that their sum overflows are still only clipped.
    env.reset(seed=0)
    huge = env.step(np.full(7, 1e308))[0]["state"]
    np.testing.assert_array_equal(huge, one)


def test_unknown_names_list_valid_choices():
    with pytest.raises(ValueError, match="render_quality must be one of"):
        gym.make("vla_gym/TabletopPick-v0", render_quality="ultra")
    with pytest.raises(ValueError, match="obs_mode must be one of"):
        gym.make("vla_gym/TabletopPick-v0", obs_mode="depth")
    with pytest.raises(ValueError, match="instruction_split must be one of"):
        gym.make("vla_gym/TabletopPick-v0", instruction_split="val")
    with pytest.raises(ValueError, match="camera must be one of"):
        gym.make("vla_gym/TabletopPick-v0", cameras=("main", "side"))
    with pytest.raises(TypeError, match=r"\['colour_mode'\]; valid: .*image_size"):
        gym.make("vla_gym/TabletopPick-v0", colour_mode=1)
    env = gym.make("vla_gym/TabletopMultiTask-v0")
    with pytest.raises(ValueError, match="valid options are"):
        env.reset(seed=0, options={"taks": "pick"})
    with pytest.raises(ValueError, match=r"must be one of \('pick', 'place', 'push', 'stack'\)"):
        env.reset(seed=0, options={"task": "throw"})
    with pytest.raises(ValueError, match="valid:"):
        env.reset(seed=0, options={"task": "pick", "target": "golden unicorn"})


def test_reset_options_target_and_instruction():
    env = gym.make("vla_gym/TabletopPick-v0", num_objects=(5, 5))
    obs, info = env.reset(seed=7)
    scene_before = env.unwrapped.sim.layout.objects
    others = [o for o in env.unwrapped.sim.layout.objects
              if o.shape in ("cube", "ball", "can") and o.name != info["target"]]
    assert others, "seed 7 should give a scene with a second pickable object"
    obs2, info2 = env.reset(seed=7, options={"target": others[0].name})
    assert info2["target"] == others[0].name
    # Same scene: the counterfactual target changes, the objects do not.
    assert env.unwrapped.sim.layout.objects == scene_before
    obs3, info3 = env.reset(seed=7, options={"instruction": "pick up the purple thing, please!"})
    assert obs3["instruction"] == "pick up the purple thing, please!"
    assert info3["target"] == info["target"]
    with pytest.raises(ValueError, match="non-empty"):
        env.reset(seed=7, options={"instruction": "  "})
    with pytest.raises(ValueError, match="outside the allowed set"):
        env.reset(seed=7, options={"instruction": "pick up the cube #1"})


def test_multitask_draws_every_family():
    env = gym.make("vla_gym/TabletopMultiTask-v0", obs_mode="state")
    families = {env.reset(seed=s)[1]["task"] for s in range(40)}
    assert families == {"pick", "place", "push", "stack"}


def test_physics_divergence_truncates_without_crash():
    env = gym.make("vla_gym/TabletopPick-v0")
    obs, _ = env.reset(seed=0)
    env.unwrapped.data.qvel[:] = 1e30
    obs2, reward, terminated, truncated, info = env.step(np.zeros(7))
    assert truncated and not terminated and info["physics_diverged"] is True
    assert np.isfinite(obs2["state"]).all()
    obs3, info3 = env.reset(seed=1)
    assert info3["physics_diverged"] is False and np.isfinite(obs3["state"]).all()


def test_frame_skip_and_dt_exposed(env):
    base = env.unwrapped
    assert base.frame_skip >= 1
    assert base.dt == pytest.approx(base.model.opt.timestep * base.frame_skip)
    assert base.action_contract.dims[-1] == "grip"


def test_high_quality_and_wrist_camera():
    env = gym.make("vla_gym/TabletopPick-v0", render_quality="high", cameras=("main", "wrist"),
                   image_size=64)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (64, 64, 3) and obs["wrist_image"].shape == (64, 64, 3)
    assert obs["wrist_image"].std() > 1
    env.close()


def test_held_out_combos_only_in_test_split():
    from vla_gym.envs.language import HELD_OUT_COMBOS

    train = gym.make("vla_gym/TabletopMultiTask-v0", obs_mode="state")
    test = gym.make("vla_gym/TabletopMultiTask-v0", obs_mode="state", instruction_split="test")
    held_in_test = 0
    for seed in range(30):
        train.reset(seed=seed)
        combos = {(o.colour, o.shape) for o in train.unwrapped.sim.layout.objects}
        assert not combos & HELD_OUT_COMBOS
        test.reset(seed=seed)
        target = test.unwrapped.episode.target
        held_in_test += (target.colour, target.shape) in HELD_OUT_COMBOS
    assert held_in_test >= 20


def test_parked_objects_are_not_drawn_and_come_back_when_used():
    from vla_gym.envs.rendering import HIDDEN_GEOM_GROUP

    env = gym.make("vla_gym/TabletopMultiTask-v0", image_size=32)
    base = env.unwrapped
    groups_seen = {}
    for seed in range(12):
        env.reset(seed=seed)
        shown = {obj.slot for obj in base.sim.layout.objects}
        for name, slot in base.sim.slots.items():
            groups = base.model.geom_group[slot.geom_ids]
            if name in shown:
                assert (groups == base.sim.compiled.group[slot.geom_ids]).all()
                assert (groups < 3).all()  # drawn by MuJoCo's default visual options
            else:
                assert (groups == HIDDEN_GEOM_GROUP).all()
            groups_seen.setdefault(name, set()).add(name in shown)
    # Over these seeds some slot is both parked and used: hiding is undone, not one-way.
    assert any(seen == {True, False} for seen in groups_seen.values())
    env.close()


def test_fast_frames_skip_haze_and_use_an_image_sized_buffer():
    import mujoco

    env = gym.make("vla_gym/TabletopPick-v0", image_size=48, render_mode="rgb_array",
                   render_size=80)
    env.reset(seed=0)
    assert env.render().shape == (80, 80, 3)
    base = env.unwrapped
    obs_renderer = base.renderers.obs_renderer()
    assert not obs_renderer.scene.flags[mujoco.mjtRndFlag.mjRND_HAZE]
    # Each renderer's buffer is its own size; the model keeps its own settings for others.
    assert obs_renderer._fast._context.offWidth == 48
    assert obs_renderer.mujoco_renderer._mjr_context.offWidth == 48
    assert base.model.vis.global_.offwidth == 640
    env.close()
    high = gym.make("vla_gym/TabletopPick-v0", image_size=32, render_quality="high")
    high.reset(seed=0)
    assert high.unwrapped.renderers.obs_renderer().scene.flags[
        mujoco.mjtRndFlag.mjRND_HAZE]
    high.close()


def test_observations_are_the_bytes_of_mujocos_renderer_api():
    """The env draws through MuJoCo's C calls directly (``rendering._FramePath``); frames
    must equal ``mujoco.Renderer.update_scene`` + ``render`` on the same renderer, also
    right after another GL context (here Pusher-v5's) was made current."""
    env = gym.make("vla_gym/TabletopPick-v0", image_size=48, cameras=("main", "wrist"))
    other = gym.make("Pusher-v5", render_mode="rgb_array", width=32, height=32)
    other.reset(seed=0)
    env.reset(seed=1)
    base = env.unwrapped
    reference = base.renderers.obs_renderer().mujoco_renderer
    previous = None
    for step in range(4):
        other.step(other.action_space.sample())
        assert other.render().shape == (32, 32, 3)
        obs = env.step(env.action_space.sample())[0]
        for camera, key in (("main", "image"), ("wrist", "wrist_image")):
            reference.update_scene(base.data, camera=camera)
            np.testing.assert_array_equal(obs[key], reference.render(), err_msg=f"{key} {step}")
        if previous is not None:  # every frame is a fresh array
            assert not np.shares_memory(obs["image"], previous["image"])
            assert not np.shares_memory(obs["image"], obs["wrist_image"])
        previous = obs
    other.close()
    env.close()


def test_objects_placed_on_the_table_settle_asleep_within_a_few_steps():
    """Resting objects sleep (no physics cost) until touched; placed touching the table and
    with ``SLEEP_TOLERANCE`` they get there in 2-3 steps instead of 5-6."""
    env = gym.make("vla_gym/TabletopPick-v0", obs_mode="state")
    base = env.unwrapped
    for seed in range(5):
        env.reset(seed=seed)
        slots = [base.sim.slots[obj.slot] for obj in base.sim.layout.objects]
        for _ in range(3):
            env.step(np.zeros(7))
        assert not any(base.data.body_awake[slot.body_id] for slot in slots), seed
        heights = [base.sim.object_height(obj.slot) for obj in base.sim.layout.objects]
        assert max(abs(h) for h in heights) < 2e-3  # resting where they were put
    env.close()
