"""Scripted navigation expert: grid planning + pure pursuit, through the same 2-D action.

The global plan is the env's geodesic distance field to the target (privileged, computed once
per episode); the expert follows it downhill to a look-ahead point and steers there with a
pure-pursuit law. Inside the goal region it turns to face the target and stops, which is what
success asks for. If the base stays pressed against something it backs off and turns away.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vla_gym.envs.navigation.env import GOAL_RADIUS, NavEnv
from vla_gym.envs.navigation.grid import clearance_cost, distance_field, downhill_path, goal_cells
from vla_gym.envs.navigation.task import FACING_TOLERANCE, SUCCESS_RADIUS
from vla_gym.envs.robots.diff_drive import wrap_angle

LOOKAHEAD_CELLS = 4  # 0.4 m along the path
TURN_IN_PLACE = 0.9  # rad of heading error above which the base turns without driving
TURN_GAIN = 2.5  # rad/s of turn rate per rad of heading error
FACE_TOLERANCE = 0.5 * FACING_TOLERANCE  # aim well inside the success tolerance
CRUISE = 0.9  # fraction of the maximum speed on straight path segments
STUCK_STEPS = 6  # consecutive steps touching something before backing off
BACKOFF_STEPS = 8


class NavExpert:
    """``act(obs) -> action``; call ``reset()`` at episode start (also detected automatically)."""

    def __init__(self, env: NavEnv, stop_distance: float = GOAL_RADIUS + 0.05) -> None:
        """``stop_distance`` (m from the target's centre) is where the base stops and turns to
        face it; the plan aims 5 cm inside it. The default leaves 15 cm to the success radius;
        demos for a policy whose perception errs by more can ask for a closer stop."""
        if not 0.4 < stop_distance < SUCCESS_RADIUS:
            raise ValueError(f"stop_distance must lie between 0.4 m (the landmark's blocked "
                             f"footprint) and the success radius {SUCCESS_RADIUS} m, got "
                             f"{stop_distance}")
        self.env = env
        self.stop_distance = float(stop_distance)
        self.goal_radius = self.stop_distance - 0.05
        self._episode: Any = None
        self._plan: np.ndarray | None = None
        self._touching = 0
        self._backoff = 0

    def reset(self) -> None:
        """Plan for the env's current episode: a field that prefers wide berths."""
        env = self.env
        self._episode = env.episode
        self._touching = self._backoff = 0
        if env.grid is not None and env.episode is not None:
            goal = goal_cells(env.grid, env.episode.target.xy, self.goal_radius)
            self._plan = distance_field(env.grid, goal, clearance_cost(env.grid))

    def act(self, obs: Any = None) -> np.ndarray:
        env = self.env
        if env.episode is not self._episode:
            self.reset()
        x, y, yaw = env.sim.robot.world_pose(env.data)
        if self._recovering():
            return np.array([-0.5, 0.8], np.float32)
        target = env.episode.target.xy
        if math.hypot(target[0] - x, target[1] - y) <= self.stop_distance:
            return self._face(target, x, y, yaw)
        assert env.grid is not None and self._plan is not None
        path = downhill_path(env.grid, self._plan, x, y, LOOKAHEAD_CELLS)
        return self._pursue(path[-1], x, y, yaw)

    def _recovering(self) -> bool:
        """Count steps spent touching an obstacle; back off for a while after too many."""
        if self._backoff > 0:
            self._backoff -= 1
            return True
        self._touching = self._touching + 1 if self.env.sim.touching_obstacle() else 0
        if self._touching >= STUCK_STEPS:
            self._touching, self._backoff = 0, BACKOFF_STEPS
            return True
        return False

    def _face(self, target, x: float, y: float, yaw: float) -> np.ndarray:
        error = wrap_angle(math.atan2(target[1] - y, target[0] - x) - yaw)
        if abs(error) <= FACE_TOLERANCE:
            return np.zeros(2, np.float32)
        return self._command(0.0, TURN_GAIN * error)

    def _pursue(self, point, x: float, y: float, yaw: float) -> np.ndarray:
        error = wrap_angle(math.atan2(point[1] - y, point[0] - x) - yaw)
        if abs(error) > TURN_IN_PLACE:
            return self._command(0.0, TURN_GAIN * error)
        speed = CRUISE * self.env.sim.robot.config.max_speed * math.cos(error)
        return self._command(speed, TURN_GAIN * error)

    def _command(self, v: float, omega: float) -> np.ndarray:
        cfg = self.env.sim.robot.config
        return np.clip([v / cfg.max_speed, omega / cfg.max_turn_rate], -1, 1).astype(np.float32)
