"""The tabletop env: an arm, a table, objects and an instruction saying what to do with them.

One class serves every tabletop id; the task families differ only in the task object(s) passed
in. The loop is Gymnasium's MuJoCo pattern: validate action -> robot controller -> physics ×
``frame_skip`` -> named reward terms -> ``evaluate()`` -> observation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from vla_gym.envs.base import (
    check_choice,
    check_instruction,
    check_options,
    check_range,
    check_size,
    copy_observation,
    instruction_space,
    reject_unknown_kwargs,
    step_physics,
    validate_action,
)
from vla_gym.envs.language import COLOURS, SHAPES, target_landmark
from vla_gym.envs.rendering import (
    CameraProjection,
    EnvRenderers,
    calibration_record,
    check_quality,
    view_projections,
)
from vla_gym.envs.robots.arm import ArmRobot
from vla_gym.envs.tabletop.layout import Layout, sample_layout
from vla_gym.envs.tabletop.objects import add_object_pool
from vla_gym.envs.tabletop.pick import PickTask
from vla_gym.envs.tabletop.place import PlaceTask
from vla_gym.envs.tabletop.push import PushTask
from vla_gym.envs.tabletop.sim import TabletopSim
from vla_gym.envs.tabletop.stack import StackTask
from vla_gym.envs.tabletop.task import Episode, TabletopTask
from vla_gym.types import (
    ARM_EE_DELTA,
    DEFAULT_IMAGE_SIZE,
    IMAGE,
    INSTRUCTION,
    INSTRUCTION_SPLITS,
    OBS_MODES,
    STATE,
    WRIST_IMAGE,
    landmark_label,
    pixel_label,
)

TASKS: dict[str, type[TabletopTask]] = {
    "pick": PickTask,
    "place": PlaceTask,
    "push": PushTask,
    "stack": StackTask,
}
CAMERAS = ("main", "wrist")
CAMERA_KEYS = {"main": IMAGE, "wrist": WRIST_IMAGE}
RESET_OPTIONS = ("task", "target", "instruction")
OBJECTS = "objects"  # state-mode key: one row per pool slot
OBJECT_FEATURES = 3 + len(SHAPES) + len(COLOURS) + 1  # pos, shape 1-hot, colour 1-hot, present
SLEEP_TOLERANCE = 3e-3
DEFAULT_REWARD_WEIGHTS = {
    "reach": 0.1, "grasp": 0.25, "lift": 0.5, "transport": 0.5, "align": 0.5,
    "push": 1.0, "on_table": 0.05, "success": 2.0,
}


def _scene_path() -> str:
    return str(resources.files("vla_gym.assets").joinpath("tabletop/scene.xml"))


class TabletopEnv(gym.Env[dict[str, Any], np.ndarray]):
    """Tabletop manipulation from camera images and a language instruction.

    Action: ``Box(-1, 1, (7,))`` end-effector delta, see ``vla_gym.types.ARM_EE_DELTA``;
    values outside [-1, 1] are clipped, NaN/inf or a wrong shape raise ``ValueError``.
    """

    observation_camera = "main"  # the camera behind the "image" key
    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        tasks: str | Sequence[str] = "pick",
        *,
        image_size: int = DEFAULT_IMAGE_SIZE,
        render_quality: str = "fast",
        obs_mode: str = "rgb",
        instruction_split: str = "train",
        cameras: Sequence[str] = ("main",),
        num_objects: tuple[int, int] = (3, 5),
        frame_skip: int = 10,
        terminate_on_success: bool = True,
        reward_weights: Mapping[str, float] | None = None,
        render_mode: str | None = None,
        render_size: int = 224,
        **unknown: Any,
    ) -> None:
        reject_unknown_kwargs(TabletopEnv.__init__, unknown)
        families = [tasks] if isinstance(tasks, str) else list(tasks)
        self.tasks = {name: TASKS[check_choice("task", name, TASKS)]() for name in families}
        self.image_size = check_size("image_size", image_size)
        self.render_quality = check_quality(render_quality)
        self.obs_mode = check_choice("obs_mode", obs_mode, OBS_MODES)
        self.instruction_split = check_choice("instruction_split", instruction_split,
                                              INSTRUCTION_SPLITS)
        self.cameras = tuple(check_choice("camera", c, CAMERAS) for c in cameras)
        if "main" not in self.cameras:
            raise ValueError(f"cameras must include 'main' (the 'image' key), got {cameras!r}")
        self.num_objects = check_range("num_objects", num_objects, 2, 5)
        self.frame_skip = int(frame_skip)
        self.terminate_on_success = terminate_on_success
        self.reward_weights = {**DEFAULT_REWARD_WEIGHTS, **dict(reward_weights or {})}
        self.render_mode = check_choice("render_mode", render_mode, [None, "rgb_array"])
        self.render_size = check_size("render_size", render_size)
        self.action_contract = ARM_EE_DELTA

        self.model, self.data = self._build_model()
        self.sim = TabletopSim.bind(self.model, self.data, ArmRobot())
        self.dt = float(self.model.opt.timestep * self.frame_skip)
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.dt))}
        self.action_space = spaces.Box(-1.0, 1.0, (ARM_EE_DELTA.dim,), np.float32)
        self.observation_space = self._make_observation_space()
        self.renderers = EnvRenderers(self.model, self.image_size, self.render_size,
                                       self.render_quality)
        self._project = CameraProjection(self.model, self.observation_camera)
        # Where the target (and the instruction's landmark) is in every other camera's image
        # too: (``wrist_target_pixel``, ``wrist_landmark_pixel``, projection) per view.
        self._view_projections = tuple(
            (pixel_label(view), landmark_label(view), project)
            for view, project in view_projections(self.model, {
                CAMERA_KEYS[c]: c for c in self.cameras
                if c != "main" and self.obs_mode == "rgb"}))
        # The slot of the object the instruction names the target by through a spatial
        # relation; None when it names the target directly (the landmark is the target).
        self._landmark_slot: str | None = None
        self.episode: Episode | None = None
        self._last_obs: dict[str, Any] | None = None

    # -- construction ----------------------------------------------------------------------
    def _build_model(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        spec = mujoco.MjSpec.from_file(_scene_path())
        floor = [g for g in spec.geoms if g.type == mujoco.mjtGeom.mjGEOM_PLANE]
        add_object_pool(spec, floor_z=float(floor[0].pos[2]) if floor else 0.0)
        model = spec.compile()
        sleep = getattr(mujoco.mjtEnableBit, "mjENBL_SLEEP", None)
        if sleep is not None:
            # Objects at rest (and parked slots) sleep until touched: halves physics time.
            model.opt.enableflags |= int(sleep)
            # At rest means slower than 3 mm/s (MuJoCo's default, 1 mm/s, kept freshly placed
            # objects awake 5 steps; this way 2; each awake step costs ~4x a quiet one).
            model.opt.sleep_tolerance = SLEEP_TOLERANCE
        return model, mujoco.MjData(model)

    def _make_observation_space(self) -> spaces.Dict:
        obs: dict[str, spaces.Space] = {
            INSTRUCTION: instruction_space(),
            STATE: spaces.Box(-np.inf, np.inf, (self.sim.robot.STATE_DIM,), np.float32),
        }
        if self.obs_mode == "rgb":
            shape = (self.image_size, self.image_size, 3)
            for camera in self.cameras:
                obs[CAMERA_KEYS[camera]] = spaces.Box(0, 255, shape, np.uint8)
        else:
            rows = len(self.sim.slots)
            obs[OBJECTS] = spaces.Box(-np.inf, np.inf, (rows, OBJECT_FEATURES), np.float32)
        return spaces.Dict(obs)

    # -- episode -----------------------------------------------------------------------------
    @property
    def task_families(self) -> tuple[str, ...]:
        return tuple(self.tasks)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        opts = check_options(options, RESET_OPTIONS)
        family = self._choose_family(opts.get("task"))
        task = self.tasks[family]
        layout, episode = self._sample_episode(task, opts.get("target"))
        text = opts.get("instruction")
        instruction = check_instruction(text) if text is not None else task.describe(
            episode, layout, self.np_random, self.instruction_split)
        self.episode = Episode(episode.family, episode.target, episode.destination,
                               episode.side, episode.goal_xy, instruction)
        landmark = target_landmark(instruction, episode.target.scene_object(),
                                   layout.scene_objects())
        self._landmark_slot = None if landmark is None else landmark.name
        mujoco.mj_resetData(self.model, self.data)
        self.sim.robot.reset(self.data, self.np_random)
        self.sim.apply_layout(layout)
        mujoco.mj_forward(self.model, self.data)
        obs = self._observation()
        return obs, self._info(self._score(task))

    def _choose_family(self, requested: str | None) -> str:
        if requested is not None:
            return check_choice("reset option 'task'", requested, self.tasks)
        names = list(self.tasks)
        return names[int(self.np_random.integers(len(names)))] if len(names) > 1 else names[0]

    def _sample_episode(self, task: TabletopTask, target: str | None) -> tuple[Layout, Episode]:
        rng = self.np_random
        for _ in range(100):
            total = int(rng.integers(self.num_objects[0], self.num_objects[1] + 1))
            layout = sample_layout(rng, task.required_shapes(rng), total, self.instruction_split)
            chosen = self._target_for(task, layout, target)
            episode = task.roles(layout, chosen, rng)
            if episode is not None:
                return layout, episode
            if target is not None:
                raise ValueError(f"the {task.family} task cannot use {target!r} in this scene")
        raise RuntimeError(f"could not sample a {task.family} episode in 100 tries")

    def _target_for(self, task: TabletopTask, layout: Layout, target: str | None):
        eligible = task.eligible_targets(layout)
        if target is None:
            return eligible[0]  # the layout puts the task's primary object first
        valid = [obj.name for obj in eligible]
        for obj in eligible:
            if target in (obj.name, obj.slot):
                return obj
        raise ValueError(
            f"target {target!r} is not a valid {task.family} target in this scene; valid: {valid}"
        )

    def counterfactual_targets(self) -> list[str]:
        """Other objects this episode's task could be about, for counterfactual tests."""
        assert self.episode is not None and self.sim.layout is not None
        task = self.tasks[self.episode.family]
        return [obj.name for obj in task.eligible_targets(self.sim.layout)
                if obj.name != self.episode.target.name]

    def camera_calibration(self) -> dict[str, dict[str, Any]]:
        """Each camera's pose and vertical field of view, keyed by its image observation.

        ``{"frame", "pos", "rot", "fovy"}``: the main camera in the world frame; the wrist
        camera in the end effector's frame, whose pose is the state's ``ee_*`` entries. ``rot``
        holds the camera's axes (MuJoCo's: it looks down its -z) row-major. Policies lift image
        points onto the table with it (``vla_gym.policies.geometry``)."""
        data = mujoco.MjData(self.model)
        mujoco.mj_forward(self.model, data)  # the home pose; the wrist mount is rigid anyway
        site = self.sim.robot.config.site_name
        ee_pos, ee_rot = data.site(site).xpos, data.site(site).xmat.reshape(3, 3)
        out = {}
        for camera in CAMERAS:
            cam = data.camera(camera)
            pos, rot = cam.xpos, cam.xmat.reshape(3, 3)
            on_arm = self.model.cam_bodyid[cam.id] != 0  # not on the world body
            if on_arm:
                pos, rot = ee_rot.T @ (pos - ee_pos), ee_rot.T @ rot
            out[CAMERA_KEYS[camera]] = calibration_record(
                "end_effector" if on_arm else "world", pos, rot, self.model.cam_fovy[cam.id])
        return out

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self.episode is None:
            raise RuntimeError("call reset() before step()")
        clipped = validate_action(action, self.action_space.shape)
        self.sim.robot.apply_action(self.data, clipped)
        task = self.tasks[self.episode.family]
        if step_physics(self.model, self.data, self.frame_skip):
            # Keep the last finite observation; the episode cannot continue from NaNs.
            return copy_observation(self._last_obs), 0.0, False, True, self._info(None)
        terms = self._score(task)
        # Summed in the order of the terms (success last), as the info lists them.
        reward = sum(self.reward_weights.get(name, 0.0) * value for name, value in terms.items())
        info = self._info(terms)
        terminated = bool(info["is_success"] and self.terminate_on_success)
        # Rendered last (as in the nav env): the software rasteriser evicts the CPU caches,
        # and the scoring above ran ~20 us a step slower when it came after the render.
        return self._observation(), float(reward), terminated, False, info

    # -- observation & info ------------------------------------------------------------------
    def _observation(self) -> dict[str, Any]:
        assert self.episode is not None
        obs: dict[str, Any] = {
            INSTRUCTION: self.episode.instruction,
            STATE: self.sim.robot.state(self.data),
        }
        if self.obs_mode == "rgb":
            for camera in self.cameras:
                obs[CAMERA_KEYS[camera]] = self.renderers.observe(self.data, camera)
        else:
            obs[OBJECTS] = self._object_features()
        self._last_obs = obs
        return obs

    def _object_features(self) -> np.ndarray:
        assert self.sim.layout is not None
        shown = {obj.slot: obj for obj in self.sim.layout.objects}
        colours, shapes = list(COLOURS), list(SHAPES)
        rows = np.zeros((len(self.sim.slots), OBJECT_FEATURES), np.float32)
        for row, slot in zip(rows, self.sim.slots):
            obj = shown.get(slot)
            if obj is None:
                continue
            row[:3] = self.sim.object_pos(slot)
            row[3 + shapes.index(obj.shape)] = 1.0
            row[3 + len(shapes) + colours.index(obj.colour)] = 1.0
            row[-1] = 1.0
        return rows

    def _score(self, task: TabletopTask) -> dict[str, float]:
        """The task's named reward terms, then ``success`` (1.0 or 0.0) from ``evaluate()``."""
        assert self.episode is not None
        terms = task.reward_terms(self.sim, self.episode)
        terms["success"] = float(task.evaluate(self.sim, self.episode)["success"])
        return terms

    def _info(self, terms: dict[str, float] | None) -> dict[str, Any]:
        """The step's info; ``terms`` from ``_score``, or None when physics diverged."""
        episode = self.episode
        assert episode is not None
        target_pos = self.sim.object_pos(episode.target.slot)
        target_pixel = self._project(self.data, target_pos)
        landmark_pos = (None if self._landmark_slot is None
                        else self.sim.object_pos(self._landmark_slot))
        info: dict[str, Any] = {
            "task": episode.family,
            "target": episode.target.name,
            "target_pos": target_pos,
            "target_pixel": target_pixel,
            "landmark_pixel": target_pixel.copy() if landmark_pos is None else self._project(
                self.data, landmark_pos),
            "destination": episode.destination.name if episode.destination else "",
            "physics_diverged": terms is None,
        }
        for key, landmark_key, project in self._view_projections:
            info[key] = project(self.data, target_pos)
            info[landmark_key] = info[key].copy() if landmark_pos is None else project(
                self.data, landmark_pos)
        if episode.destination is not None:
            info["destination_pos"] = self.sim.object_pos(episode.destination.slot)
        if episode.goal_xy is not None:
            info["goal_xy"] = np.asarray(episode.goal_xy)
        if terms is None:
            info["is_success"] = False
            return info
        for name, value in terms.items():
            info[f"reward_{name}"] = value
        info["is_success"] = bool(terms["success"])
        return info

    # -- rendering ---------------------------------------------------------------------------
    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self.renderers.frame(self.data, "main")

    def close(self) -> None:
        renderers = getattr(self, "renderers", None)
        if renderers is not None:
            renderers.close()
