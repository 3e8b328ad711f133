"""The navigation env: a diff-drive base in procedurally generated rooms, told where to go.

One class serves every navigation id; families differ in the task object(s) passed in. The
loop follows the tabletop env: validate action -> base controller (rate limits) -> physics ×
``frame_skip`` -> named reward terms -> ``evaluate()`` -> observation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    validate_action,
)
from vla_gym.envs.language import COLOURS
from vla_gym.envs.navigation.goto import GoToTask
from vla_gym.envs.navigation.grid import (
    OccupancyGrid,
    distance_field,
    geodesic,
    goal_cells,
    occupancy,
)
from vla_gym.envs.navigation.language import (
    LANDMARK_SHAPES,
    make_instruction,
    resolve,
    simple_phrase,
)
from vla_gym.envs.navigation.relative import RelativeTask
from vla_gym.envs.navigation.scene import NavSim, build_model, landmark_slots
from vla_gym.envs.navigation.task import SUCCESS_RADIUS, NavEpisode, NavTask, evaluate
from vla_gym.envs.navigation.world import (
    ROBOT_CLEARANCE,
    World,
    free_point,
    sample_furniture,
    sample_rooms,
)
from vla_gym.envs.rendering import (
    CameraProjection,
    EnvRenderers,
    check_quality,
    view_projections,
)
from vla_gym.envs.robots.diff_drive import DiffDriveBase
from vla_gym.types import (
    BASE_VELOCITY,
    DEFAULT_IMAGE_SIZE,
    IMAGE,
    INSTRUCTION,
    INSTRUCTION_SPLITS,
    OBS_MODES,
    STATE,
    TOP_IMAGE,
    pixel_label,
)

TASKS: dict[str, type[NavTask]] = {"goto": GoToTask, "relative": RelativeTask}
CAMERAS = ("main", "top")
CAMERA_KEYS = {"main": IMAGE, "top": TOP_IMAGE}
CAMERA_NAMES = {"main": "ego", "top": "top"}
RESET_OPTIONS = ("task", "target", "instruction")
OBJECTS = "objects"  # state-mode key: one row per landmark slot
OBJECT_FEATURES = 2 + len(LANDMARK_SHAPES) + len(COLOURS) + 1  # xy, shape, colour, present
GOAL_RADIUS = SUCCESS_RADIUS - 0.2  # m: where planners aim, inside the success radius
MIN_START_DISTANCE = 1.2  # m from the target
DEFAULT_REWARD_WEIGHTS = {"progress": 1.0, "facing": 0.01, "collision": -0.1, "success": 2.0}


class NavEnv(gym.Env[dict[str, Any], np.ndarray]):
    """Language-directed navigation from an egocentric camera.

    Action: ``Box(-1, 1, (2,))`` = ``[v, omega]``, see ``vla_gym.types.BASE_VELOCITY``; values
    outside [-1, 1] are clipped, NaN/inf or a wrong shape raise ``ValueError``. Commands reach
    the base through the contract's acceleration limits (``accel_limits``).
    """

    observation_camera = "ego"  # the camera behind the "image" key
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        tasks: str | Sequence[str] = "goto",
        *,
        image_size: int = DEFAULT_IMAGE_SIZE,
        render_quality: str = "fast",
        obs_mode: str = "rgb",
        instruction_split: str = "train",
        cameras: Sequence[str] = ("main",),
        num_rooms: tuple[int, int] = (1, 4),
        num_landmarks: tuple[int, int] = (3, 6),
        num_furniture: tuple[int, int] = (0, 3),
        frame_skip: int = 5,
        terminate_on_success: bool = True,
        reward_weights: Mapping[str, float] | None = None,
        render_mode: str | None = None,
        render_size: int = 256,
        **unknown: Any,
    ) -> None:
        reject_unknown_kwargs(NavEnv.__init__, unknown)
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
        self.num_rooms = check_range("num_rooms", num_rooms, 1, 4)
        self.num_landmarks = check_range("num_landmarks", num_landmarks, 3, 6)
        self.num_furniture = check_range("num_furniture", num_furniture, 0, 4)
        self.frame_skip = int(frame_skip)
        self.terminate_on_success = terminate_on_success
        self.reward_weights = {**DEFAULT_REWARD_WEIGHTS, **dict(reward_weights or {})}
        self.render_mode = check_choice("render_mode", render_mode, [None, "rgb_array"])
        self.render_size = check_size("render_size", render_size)
        self.action_contract = BASE_VELOCITY

        self.model = build_model()
        self.data = mujoco.MjData(self.model)
        self.sim = NavSim.bind(self.model, self.data, DiffDriveBase())
        self.dt = float(self.model.opt.timestep * self.frame_skip)
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.dt))}
        self.action_space = spaces.Box(-1.0, 1.0, (BASE_VELOCITY.dim,), np.float32)
        self.observation_space = self._make_observation_space()
        self.renderers = EnvRenderers(self.model, self.image_size, self.render_size,
                                       self.render_quality)
        self._project = CameraProjection(self.model, self.observation_camera)
        # Where the target is in every other camera's image too (``top_target_pixel``).
        self._view_projections = tuple(
            (pixel_label(view), project) for view, project in view_projections(self.model, {
                CAMERA_KEYS[c]: CAMERA_NAMES[c] for c in self.cameras
                if c != "main" and self.obs_mode == "rgb"}))
        self.episode: NavEpisode | None = None
        self.grid: OccupancyGrid | None = None
        self.field: np.ndarray | None = None  # path length (m) to the target's goal region
        self._last_obs: dict[str, Any] | None = None
        self._path_length = 0.0
        self._collisions = 0
        self._touching = False

    @property
    def accel_limits(self) -> tuple[float, float]:
        """(m/s^2, rad/s^2) the base's commands are rate-limited by."""
        cfg = self.sim.robot.config
        return cfg.linear_accel, cfg.angular_accel

    @property
    def task_families(self) -> tuple[str, ...]:
        return tuple(self.tasks)

    @property
    def world(self) -> World:
        if self.sim.world is None:
            raise RuntimeError("call reset() first")
        return self.sim.world

    def _make_observation_space(self) -> spaces.Dict:
        obs: dict[str, spaces.Space] = {
            INSTRUCTION: instruction_space(),
            STATE: spaces.Box(-np.inf, np.inf, (DiffDriveBase.STATE_DIM,), np.float32),
        }
        if self.obs_mode == "rgb":
            shape = (self.image_size, self.image_size, 3)
            for camera in self.cameras:
                obs[CAMERA_KEYS[camera]] = spaces.Box(0, 255, shape, np.uint8)
        else:
            rows = len(landmark_slots())
            obs[OBJECTS] = spaces.Box(-np.inf, np.inf, (rows, OBJECT_FEATURES), np.float32)
        return spaces.Dict(obs)

    # -- episode -----------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        opts = check_options(options, RESET_OPTIONS)
        family = self._choose_family(opts.get("task"))
        world, target, instruction = self._sample_episode(self.tasks[family], opts.get("target"))
        text = opts.get("instruction")
        if text is not None:
            instruction = check_instruction(text)
        self.episode = NavEpisode(family, target, instruction)
        mujoco.mj_resetData(self.model, self.data)
        self.sim.apply_world(world)
        mujoco.mj_forward(self.model, self.data)
        self._path_length = self._geodesic()
        self._collisions, self._touching = 0, False
        return self._observation(), self._info(diverged=False, progress=0.0)

    def _choose_family(self, requested: str | None) -> str:
        if requested is not None:
            return check_choice("reset option 'task'", requested, self.tasks)
        names = list(self.tasks)
        return names[int(self.np_random.integers(len(names)))] if len(names) > 1 else names[0]

    def _sample_episode(self, task: NavTask, target: str | None):
        """The seed's world, target and instruction; a requested ``target`` swaps in another
        landmark of that same world (a counterfactual episode) named by colour and shape."""
        rng = self.np_random
        world, default, instruction = self._sample_world(task, rng)
        if target is None or target in (default.name, default.slot):
            return world, default, instruction
        chosen = next((o for o in world.landmarks if target in (o.name, o.slot)), None)
        if chosen is None:
            raise ValueError(f"target {target!r} is not in this world; valid: "
                             f"{[o.name for o in world.landmarks]}")
        if not self._solvable(world, chosen):
            raise ValueError(f"target {target!r} cannot be reached in this world")
        phrase = simple_phrase(chosen, world.landmarks, rng, self.instruction_split)
        return world, chosen, make_instruction(phrase, rng, self.instruction_split)

    def _sample_world(self, task: NavTask, rng: np.random.Generator):
        for _ in range(200):
            rooms = sample_rooms(rng, int(rng.integers(self.num_rooms[0], self.num_rooms[1] + 1)))
            furniture = sample_furniture(rng, rooms, int(rng.integers(
                self.num_furniture[0], self.num_furniture[1] + 1)))
            count = int(rng.integers(self.num_landmarks[0], self.num_landmarks[1] + 1))
            plan = task.plan(rng, rooms, furniture, count, self.instruction_split)
            start = None if plan is None else self._start_pose(rng, rooms, furniture, plan)
            if plan is None or start is None:
                continue
            world = World(rooms, tuple(furniture), plan.landmarks, start)
            if not self._solvable(world, plan.target):
                continue
            instruction = task.instruction(plan, rng, self.instruction_split)
            if resolve(instruction, world.landmarks, world.start_room,
                       len(rooms.rooms)) == [plan.target]:
                return world, plan.target, instruction
        raise RuntimeError(f"could not sample a {task.family} episode in 200 tries")

    def counterfactual_targets(self) -> list[str]:
        """Other landmarks of the current world, for counterfactual-instruction tests."""
        assert self.episode is not None
        return [o.name for o in self.world.landmarks if o is not self.episode.target]

    def _start_pose(self, rng, rooms, furniture, plan) -> tuple[float, float, float] | None:
        room = plan.start_rooms[int(rng.integers(len(plan.start_rooms)))]
        taken = [o.xy for o in plan.landmarks]
        for _ in range(20):
            point = free_point(rng, rooms.rooms[room], ROBOT_CLEARANCE + 0.05, furniture,
                               taken, 0.75, tries=5)
            if point is None:
                return None
            tx, ty = plan.target.xy
            if np.hypot(point[0] - tx, point[1] - ty) >= MIN_START_DISTANCE:
                return point[0], point[1], float(rng.uniform(-np.pi, np.pi))
        return None

    def _solvable(self, world: World, target) -> bool:
        """Plan once per episode: the target's goal region must be reachable from the start."""
        grid = occupancy(world)
        field = distance_field(grid, goal_cells(grid, target.xy, GOAL_RADIUS))
        self.grid, self.field = grid, field
        return bool(np.isfinite(geodesic(grid, field, world.start[0], world.start[1])))

    def _geodesic(self) -> float:
        assert self.grid is not None and self.field is not None
        x, y, _ = self.sim.robot.world_pose(self.data)
        return geodesic(self.grid, self.field, x, y)

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self.episode is None:
            raise RuntimeError("call reset() before step()")
        clipped = validate_action(action, self.action_space.shape)
        if self.sim.robot.step(self.model, self.data, clipped, self.frame_skip):
            # Keep the last finite observation; the episode cannot continue from NaNs.
            return copy_observation(self._last_obs), 0.0, False, True, self._info(True, 0.0)
        touching = self.sim.touching_obstacle()
        self._collisions += int(touching and not self._touching)
        self._touching = touching
        path_length = self._geodesic()
        progress = self._path_length - path_length if np.isfinite(path_length) else 0.0
        self._path_length = path_length if np.isfinite(path_length) else self._path_length
        info = self._info(diverged=False, progress=progress)
        reward = sum(self.reward_weights.get(k[7:], 0.0) * v
                     for k, v in info.items() if k.startswith("reward_"))
        terminated = bool(info["is_success"] and self.terminate_on_success)
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
                obs[CAMERA_KEYS[camera]] = self.renderers.observe(self.data, CAMERA_NAMES[camera])
        else:
            obs[OBJECTS] = self._object_features()
        self._last_obs = obs
        return obs

    def _to_odometry(self, xy: tuple[float, float]) -> tuple[float, float]:
        """World (x, y) -> the odometry frame (origin and heading of the start pose)."""
        x0, y0, yaw0 = self.world.start
        c, s = np.cos(yaw0), np.sin(yaw0)
        dx, dy = xy[0] - x0, xy[1] - y0
        return float(c * dx + s * dy), float(-s * dx + c * dy)

    def _object_features(self) -> np.ndarray:
        """Landmarks in the odometry frame (where ``state`` puts the base)."""
        shown = {obj.slot: obj for obj in self.world.landmarks}
        shapes, colours = list(LANDMARK_SHAPES), list(COLOURS)
        rows = np.zeros((len(landmark_slots()), OBJECT_FEATURES), np.float32)
        for row, slot in zip(rows, landmark_slots()):
            obj = shown.get(slot)
            if obj is None:
                continue
            row[:2] = self._to_odometry(obj.xy)
            row[2 + shapes.index(obj.shape)] = 1.0
            row[2 + len(shapes) + colours.index(obj.colour)] = 1.0
            row[-1] = 1.0
        return rows

    def _info(self, diverged: bool, progress: float) -> dict[str, Any]:
        episode = self.episode
        assert episode is not None
        pose = self.sim.robot.world_pose(self.data)
        result = evaluate(pose, self.sim.robot.velocity(self.data), episode.target)
        success = bool(result["success"] and not diverged)
        target_world = np.array([*episode.target.xy, 0.0])
        info = {
            "task": episode.family,
            "target": episode.target.name,
            # In the odometry frame, like ``state``: what a grounding head can learn to predict.
            "target_pos": np.array([*self._to_odometry(episode.target.xy), 0.0]),
            "target_pos_world": target_world,
            "target_pixel": self._project(self.data, target_world),
            "target_shape": episode.target.shape,
            "target_colour": episode.target.colour,
            "robot_pose": pose,
            "distance": result["distance"],
            "path_length": self._path_length,
            "collisions": self._collisions,
            "physics_diverged": diverged,
            "reward_progress": float(progress),
            "reward_facing": float(np.cos(result["bearing"])) if result["near"] else 0.0,
            "reward_collision": float(self._touching),
            "reward_success": float(success),
            "is_success": success,
        }
        for key, project in self._view_projections:
            info[key] = project(self.data, target_world)
        return info

    # -- rendering ---------------------------------------------------------------------------
    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self.renderers.frame(self.data, "top")

    def close(self) -> None:
        renderers = getattr(self, "renderers", None)
        if renderers is not None:
            renderers.close()
