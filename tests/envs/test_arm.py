"""Behaviour tests for the tabletop arm MJCF and its end-effector delta controller."""

from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np
import pytest

from vla_gym.envs.robots import arm as arm_module
from vla_gym.envs.robots.arm import ArmConfig, ArmRobot
from vla_gym.types import ARM_STATE_FIELDS

FRAME_SKIP = 10
OBJECTS = {
    # name: (geom type, size, initial position, grasp height of the EE site)
    "cube": (mujoco.mjtGeom.mjGEOM_BOX, [0.02, 0.02, 0.02], [0.5, 0.0, 0.02], 0.02),
    "ball": (mujoco.mjtGeom.mjGEOM_SPHERE, [0.02, 0.0, 0.0], [0.45, 0.2, 0.02], 0.02),
    "can": (mujoco.mjtGeom.mjGEOM_CYLINDER, [0.02, 0.04, 0.0], [0.55, -0.2, 0.04], 0.045),
}


def _scene_path() -> Path:
    return Path(arm_module.__file__).parents[2] / "assets" / "tabletop" / "scene.xml"


def build_scene() -> mujoco.MjModel:
    """Scene loaded through MjSpec with free-jointed cube, ball and upright can added."""
    spec = mujoco.MjSpec.from_file(str(_scene_path()))
    for name, (gtype, size, pos, _) in OBJECTS.items():
        body = spec.worldbody.add_body(name=name, pos=pos)
        body.add_freejoint()
        body.add_geom(type=gtype, size=size, mass=0.05, friction=[1.0, 0.005, 0.0001])
    return spec.compile()


@pytest.fixture(scope="module")
def model() -> mujoco.MjModel:
    return build_scene()


@pytest.fixture()
def sim(model: mujoco.MjModel) -> tuple[mujoco.MjModel, mujoco.MjData, ArmRobot]:
    data = mujoco.MjData(model)
    arm = ArmRobot()
    arm.bind(model, data)
    arm.reset(data, np.random.default_rng(0))
    return model, data, arm


def step(sim: tuple, action: list[float] | np.ndarray, n: int = 1) -> None:
    model, data, arm = sim
    for _ in range(n):
        arm.apply_action(data, np.asarray(action, dtype=np.float64))
        mujoco.mj_step(model, data, FRAME_SKIP)


def action(**kw: float) -> np.ndarray:
    """7-D action from named dims; gripper open unless ``grip`` is given."""
    names = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "grip")
    out = np.zeros(7)
    out[6] = -1.0
    for key, value in kw.items():
        out[names.index(key)] = value
    return out


def goto(sim: tuple, goal: np.ndarray, grip: float, steps: int) -> None:
    """Proportional scripted motion of the EE to ``goal`` (one step = 1 cm at most)."""
    _, data, arm = sim
    for _ in range(steps):
        a = np.zeros(7)
        a[:3] = np.clip((goal - arm.ee_pos(data)) / 0.01, -1.0, 1.0)
        a[6] = grip
        step(sim, a)


def test_state_shape_and_dtype(sim: tuple) -> None:
    _, data, arm = sim
    state = arm.state(data)
    assert state.shape == (ArmRobot.STATE_DIM,) == (21,)
    assert state.dtype == np.float32
    np.testing.assert_allclose(state[13:16], arm.ee_pos(data), atol=1e-6)
    assert abs(np.linalg.norm(state[16:20]) - 1.0) < 1e-5


def test_home_pose_points_down_above_table(sim: tuple) -> None:
    _, data, arm = sim
    np.testing.assert_allclose(arm.ee_pos(data), [0.45, 0.0, 0.25], atol=5e-3)
    site_z_axis = data.site_xmat[arm._site].reshape(3, 3)[:, 2]
    assert site_z_axis[2] < -0.99  # fingers point straight down
    assert abs(arm.ee_yaw(data)) < 1e-3
    assert arm.gripper_opening(data) == pytest.approx(0.08, abs=1e-3)


def test_reset_is_deterministic_given_seed(model: mujoco.MjModel) -> None:
    def reset_state(seed: int) -> np.ndarray:
        data = mujoco.MjData(model)
        arm = ArmRobot()
        arm.bind(model, data)
        arm.reset(data, np.random.default_rng(seed), noise=0.05)
        return np.concatenate([arm.state(data), data.ctrl, arm.target_pos])

    np.testing.assert_array_equal(reset_state(3), reset_state(3))
    assert not np.allclose(reset_state(3), reset_state(4))


def test_dx_moves_ee_along_x(sim: tuple) -> None:
    _, data, arm = sim
    start = arm.ee_pos(data)
    step(sim, action(dx=1.0), 10)
    moved = arm.ee_pos(data) - start
    assert moved[0] == pytest.approx(0.10, rel=0.15)
    assert np.abs(moved[1:]).max() < 0.01


@pytest.mark.parametrize("axis", [1, 2])
def test_dy_dz_move_ee_along_axis(sim: tuple, axis: int) -> None:
    _, data, arm = sim
    start = arm.ee_pos(data)
    step(sim, np.eye(7)[axis] * -1.0 + np.eye(7)[6] * -1.0, 10)
    moved = arm.ee_pos(data) - start
    assert moved[axis] == pytest.approx(-0.10, rel=0.15)
    assert np.abs(np.delete(moved, axis)).max() < 0.01


def test_dyaw_rotates_gripper_about_z(sim: tuple) -> None:
    _, data, arm = sim
    start, yaw0 = arm.ee_pos(data), arm.ee_yaw(data)
    step(sim, action(dyaw=1.0), 10)
    step(sim, action(), 5)
    assert arm.ee_yaw(data) - yaw0 == pytest.approx(0.5, rel=0.1)
    assert np.abs(arm.ee_pos(data) - start).max() < 0.01
    site_z_axis = data.site_xmat[arm._site].reshape(3, 3)[:, 2]
    assert site_z_axis[2] < -0.99  # still pointing down


def test_zero_action_holds_pose(sim: tuple) -> None:
    _, data, arm = sim
    step(sim, action(dx=0.5, dy=-0.5), 5)
    step(sim, action(), 10)
    start = arm.ee_pos(data)
    for _ in range(100):
        step(sim, action())
        assert np.linalg.norm(arm.ee_pos(data) - start) < 0.002


def test_target_is_clamped_to_workspace(sim: tuple) -> None:
    _, data, arm = sim
    step(sim, action(dz=1.0), 40)
    assert arm.target_pos[2] <= arm.config.workspace_high[2] + 1e-9
    assert arm.ee_pos(data)[2] < arm.config.workspace_high[2] + 0.01


def test_no_windup_when_blocked_by_table(sim: tuple) -> None:
    _, data, arm = sim
    step(sim, action(dz=-1.0), 60)  # pushes the fingertips into the table
    assert arm.target_pos[2] - arm.ee_pos(data)[2] > -arm.config.max_pos_error - 1e-6
    low = arm.ee_pos(data)[2]
    step(sim, action(dz=1.0), 5)
    assert arm.ee_pos(data)[2] > low + 0.03  # reacts at once, no unwinding first


def test_gripper_closes_and_opens(sim: tuple) -> None:
    _, data, arm = sim
    step(sim, action(grip=1.0), 15)
    assert arm.gripper_opening(data) < 0.003
    step(sim, action(grip=-1.0), 15)
    assert arm.gripper_opening(data) > 0.077


def test_state_carries_the_gripper_velocity(sim: tuple) -> None:
    """The last state entry is d(opening)/dt: negative while the fingers close, about zero once
    they have stopped (what tells a policy a grasp has settled)."""
    _, data, arm = sim
    field = ARM_STATE_FIELDS.index("gripper_velocity")
    assert arm.state(data)[field] == pytest.approx(0.0, abs=1e-6)  # at rest after reset
    before = arm.gripper_opening(data)
    step(sim, action(grip=1.0), 2)
    closing = arm.state(data)[field]
    assert closing < -0.05  # m/s, a 2-step close moves the fingers centimetres per second
    assert closing == pytest.approx(arm.gripper_velocity(data)) == -arm.gripper_speed(data)
    assert arm.gripper_opening(data) < before
    step(sim, action(grip=1.0), 30)
    assert abs(arm.state(data)[field]) < 0.005  # settled fully closed


def test_geom_id_sets(sim: tuple) -> None:
    model, _, arm = sim
    left, right = arm.finger_geom_ids
    assert model.geom(left).name == "finger_left_pad"
    assert model.geom(right).name == "finger_right_pad"
    assert {left, right} <= arm.arm_geom_ids
    assert model.geom("table_top").id not in arm.arm_geom_ids
    assert model.geom("finger_left_link").id in arm.arm_geom_ids
    assert all(model.geom_bodyid[g] != model.body("cube").id for g in arm.arm_geom_ids)


@pytest.mark.parametrize("name", list(OBJECTS))
def test_scripted_grasp_lifts_object(sim: tuple, name: str) -> None:
    model, data, arm = sim
    body = model.body(name).id
    step(sim, action(), 10)  # let objects settle
    obj = data.xpos[body].copy()
    grasp_z = OBJECTS[name][3]
    assert not arm.is_grasping(data, body)

    goto(sim, np.array([obj[0], obj[1], grasp_z + 0.12]), -1.0, 40)
    goto(sim, np.array([obj[0], obj[1], grasp_z]), -1.0, 25)
    step(sim, action(grip=1.0), 10)
    goto(sim, np.array([obj[0], obj[1], grasp_z + 0.15]), 1.0, 25)

    assert data.xpos[body][2] - obj[2] >= 0.1
    assert arm.is_grasping(data, body)
    step(sim, action(grip=1.0), 50)
    assert data.xpos[body][2] - obj[2] >= 0.1
    assert arm.is_grasping(data, body)
    assert 0.03 < arm.gripper_opening(data) < 0.045  # stopped by the 4 cm object


def test_custom_config_is_used(model: mujoco.MjModel) -> None:
    data = mujoco.MjData(model)
    arm = ArmRobot(ArmConfig(workspace_high=(0.8, 0.4, 0.3)))
    arm.bind(model, data)
    arm.reset(data, np.random.default_rng(0))
    step((model, data, arm), action(dz=1.0), 20)
    assert arm.target_pos[2] <= 0.3 + 1e-9


def test_reset_before_bind_raises(model: mujoco.MjModel) -> None:
    with pytest.raises(RuntimeError):
        ArmRobot().reset(mujoco.MjData(model), np.random.default_rng(0))
