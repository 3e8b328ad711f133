"""Scripted expert for every tabletop family, acting through the same 7-D action as a policy.

It reads privileged state (object poses, the episode's target and destination) from the env it
is bound to and follows waypoints with a proportional controller. Pick, place and stack are
fixed waypoint sequences re-aimed at the objects' current positions every step, which start
over (backing off with the gripper opening) when the object is not in hand where it should be;
push is a closed loop that re-approaches whenever the object drifts off the line to its goal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_gym.envs.tabletop.env import TabletopEnv
from vla_gym.envs.tabletop.objects import SHAPE_INFO
from vla_gym.envs.tabletop.push import PUSH_STANDOFF
from vla_gym.envs.tabletop.task import Episode
from vla_gym.types import ARM_EE_DELTA

OPEN, CLOSE = -1.0, 1.0
HOVER = 0.10  # m above the object's top before descending
# The approach is a funnel: the gripper may be at most FUNNEL_SLOPE x its horizontal error above
# the grasp point (capped at HOVER), so it descends only as fast as it lines up. The action is
# then a function of the state alone, whatever happened before: a perturbed gripper is brought
# back over the object before it goes lower, which is what a cloned policy has to learn.
FUNNEL_SLOPE = 2.0
CARRY_Z = 0.16  # m: transport height for place and stack
GRASP_DEPTH = 0.012  # m the grasp point sits below the object's top (capped at its centre)
# The gripper starts closing this far from the grasp point and goes on closing in on it while the
# fingers travel. Closing only once there leaves the state a policy comes to rest in (open, on
# the grasp point) labelled "open" by every approach step that passes it and "close" once, and a
# cloned policy that stops a few millimetres off then waits there with the gripper open.
CLOSE_WITHIN = 0.012  # m
CLOSE_STEPS = 8  # at most: the lift starts as soon as the fingers have settled on the object
# The fingers have settled on the object once the gripper opening changes slower than this.
# Lifting then, rather than after a fixed count of still steps, keeps the action a function of
# what a policy sees: after a timed hold the same closed, motionless state is labelled "wait"
# several times and "lift" once, and a cloned policy averages that to hardly lifting at all.
FINGERS_SETTLED = 0.005  # m/s
OPEN_STEPS = 6
PUSH_Z = 0.02
PUSH_CLEARANCE_Z = 0.15  # m: travel height when (re)approaching, above every object's top
PUSH_LATERAL_LIMIT = 0.02  # m off the push line before the expert re-approaches
PUSH_SPEED = 0.6  # fraction of the maximum translation per step while in contact
# Proportional gain on the pose error (1.0 would close the whole error in one step). Below 0.5
# the loop stays stable when the command reaches the robot one or two steps late, as it does over
# ROS: at 1.0 a single step of latency makes the gripper hunt around the grasp point forever.
GAIN = 0.4
# A grasp starts over (the gripper backs off BACK_OFF upwards while opening, then approaches
# again) when the grasp point is more than GRASP_SLACK from the gripper while it closes, or when
# the object has been out of hand MISSED_GRASP_STEPS steps in a row where it should be held (a
# few, not one: a held object can lose contact with one pad for a step while it settles).
GRASP_SLACK = 0.015  # m
MISSED_GRASP_STEPS = 3
BACK_OFF = 0.05  # m


@dataclass
class Waypoint:
    """Go to ``target()`` with the gripper at ``grip``; done within ``tol`` after ``hold`` steps."""

    target: Callable[[], np.ndarray]
    grip: float
    tol: float = 0.008
    hold: int = 0
    yaw: Callable[[], float] | None = None
    # Must hold on this waypoint, or the grasp starts over once it has failed ``patience``
    # steps in a row.
    keep: Callable[[], bool] | None = None
    patience: int = 1
    # Done before ``hold`` steps once this holds (``hold`` is then a cap).
    until: Callable[[], bool] | None = None
    # The largest translation command on the way, as a fraction of the action's limit.
    speed: float = 1.0


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


class TabletopExpert:
    """``act(obs) -> action``; call ``reset()`` at episode start (also detected automatically).

    ``lift_speed`` (0, 1]: how fast the grasped object is lifted, as a fraction of the
    action's limit (1 cm a step). Below 1 the expert is a deliberately slow demonstrator: on
    Pick a lift at 0.1 takes 50 steps to clear the success height, so late grasps run out of
    time; BC from such demos gives the weak start that RL from preferences improves on
    (``benchmarks/bench_rlhf.py``).

    ``square_cubes``: turn the gripper square to a cube's faces before grasping it (the
    default). Without it the gripper keeps its heading and closes across the cube as it
    stands: the fingers turn the cube or jam on its edges (4.2-5.6 cm open against 4.0), and
    the expert lifts it all the same (Pick: 100 of 100 episodes). A policy that cannot see
    which way a cube is turned (a geometry-only head) can follow that demonstrator; cloned
    from the squaring one, it closes across the cube, jams, and never lifts, a state its
    demos never showed.
    """

    def __init__(self, env: TabletopEnv, lift_speed: float = 1.0,
                 square_cubes: bool = True) -> None:
        if not (isinstance(lift_speed, (int, float)) and 0.0 < lift_speed <= 1.0):
            raise ValueError(f"lift_speed must be a number in (0, 1], got {lift_speed!r}")
        if not isinstance(square_cubes, bool):
            raise ValueError(f"square_cubes must be True or False, got {square_cubes!r}")
        self.lift_speed = float(lift_speed)
        self.square_cubes = square_cubes
        self.env = env
        self.sim = env.sim
        self._episode: Episode | None = None
        self._plan: list[Waypoint] = []
        self._held = 0
        self._missed = 0
        self._push_state = "approach"

    def reset(self) -> None:
        self._episode = None

    def act(self, obs: Any = None) -> np.ndarray:
        episode = self.env.episode
        if episode is None:
            raise RuntimeError("the expert's env has not been reset")
        if episode is not self._episode:
            self._start(episode)
        if episode.family == "push":
            return self._push_action(episode)
        return self._follow_plan()

    # -- plans ---------------------------------------------------------------------------------
    def _start(self, episode: Episode) -> None:
        self._episode, self._push_state = episode, "approach"
        self._plan = self._grasp_and_go(episode)

    def _grasp_and_go(self, episode: Episode) -> list[Waypoint]:
        """The family's plan from the approach on (a fresh grasp yaw: a missed grasp may have
        turned the object)."""
        self._held = self._missed = 0
        self._grasp_yaw = self._choose_grasp_yaw(episode.target.slot, episode.target.shape)
        builders = {"pick": self._pick_plan, "place": self._place_plan, "stack": self._place_plan}
        return builders[episode.family](episode) if episode.family in builders else []

    def _regrasp_plan(self, episode: Episode) -> list[Waypoint]:
        """After a missed grasp: rise ``BACK_OFF`` opening the gripper, then the plan again."""
        back_off = self.sim.ee_pos() + [0.0, 0.0, BACK_OFF]
        plan = self._grasp_and_go(episode)
        yaw = self._grasp_yaw
        return [Waypoint(lambda: back_off, OPEN, tol=0.01, hold=OPEN_STEPS,
                         yaw=lambda: yaw), *plan]

    def _choose_grasp_yaw(self, slot: str, shape: str) -> float:
        current = self.sim.robot.ee_yaw(self.sim.data)
        if shape != "cube" or not self.square_cubes:
            return current
        base = self.sim.object_yaw(slot)
        options = [base + k * math.pi / 2 for k in range(-4, 5)]
        return min(options, key=lambda yaw: abs(_wrap(yaw - current)))

    def _grasp_point(self, slot: str, shape: str) -> np.ndarray:
        pos = self.sim.object_pos(slot)
        info = SHAPE_INFO[shape]
        top = pos[2] - info.rest_height + info.top_height
        pos[2] = max(top - GRASP_DEPTH, pos[2])
        return pos

    def _pick_plan(self, episode: Episode) -> list[Waypoint]:
        slot, shape = episode.target.slot, episode.target.shape
        grasp = lambda: self._grasp_point(slot, shape)  # noqa: E731
        yaw = lambda: self._grasp_yaw  # noqa: E731
        self._lift_from = None
        aligned = lambda: bool(np.linalg.norm(grasp() - self.sim.ee_pos()) < GRASP_SLACK)  # noqa: E731
        return [
            Waypoint(lambda: self._funnel(grasp()), OPEN, tol=CLOSE_WITHIN, yaw=yaw),
            Waypoint(grasp, CLOSE, tol=1.0, hold=CLOSE_STEPS, yaw=yaw,
                     keep=aligned, until=lambda: self._fingers_settled_on(slot)),
            Waypoint(lambda: self._fixed_xy_at(CARRY_Z), CLOSE, tol=0.01, yaw=yaw,
                     keep=self._in_hand, patience=MISSED_GRASP_STEPS, speed=self.lift_speed),
        ]

    def _fingers_settled_on(self, slot: str) -> bool:
        """Both pads on the object and the fingers no longer closing."""
        return (self.sim.robot.gripper_speed(self.sim.data) < FINGERS_SETTLED
                and self.sim.is_grasping(slot))

    def _in_hand(self) -> bool:
        assert self._episode is not None
        return self.sim.is_grasping(self._episode.target.slot)

    def _funnel(self, grasp: np.ndarray) -> np.ndarray:
        """Where to head for now: above ``grasp`` by FUNNEL_SLOPE x the horizontal error."""
        xy_error = float(np.linalg.norm(grasp[:2] - self.sim.ee_pos()[:2]))
        return grasp + [0.0, 0.0, min(HOVER, FUNNEL_SLOPE * xy_error)]

    def _fixed_xy_at(self, z: float) -> np.ndarray:
        if self._lift_from is None:
            self._lift_from = self.sim.ee_pos()
        return np.array([self._lift_from[0], self._lift_from[1], z])

    def _place_plan(self, episode: Episode) -> list[Waypoint]:
        assert episode.destination is not None
        dst, target = episode.destination, episode.target
        drop_z = self._drop_height(episode)
        over = lambda: np.r_[self.sim.object_pos(dst.slot)[:2], CARRY_Z]  # noqa: E731
        down = lambda: np.r_[self.sim.object_pos(dst.slot)[:2], drop_z]  # noqa: E731
        yaw = self._place_yaw(target.shape, dst)
        plan = self._pick_plan(episode)
        return plan + [
            Waypoint(over, CLOSE, tol=0.01, yaw=yaw, keep=self._in_hand,
                     patience=MISSED_GRASP_STEPS),
            Waypoint(down, CLOSE, tol=0.006, yaw=yaw, keep=self._in_hand,
                     patience=MISSED_GRASP_STEPS),
            Waypoint(lambda: self.sim.ee_pos(), OPEN, tol=1.0, hold=OPEN_STEPS, yaw=yaw),
            Waypoint(lambda: self.sim.ee_pos() + [0, 0, 0.08], OPEN, tol=0.01),
            Waypoint(lambda: self.sim.ee_pos(), OPEN, tol=1.0, hold=10_000),
        ]

    def _drop_height(self, episode: Episode) -> float:
        """Grasp-point height that puts the carried object just above the destination."""
        assert episode.destination is not None
        target, dst = episode.target, episode.destination
        grasp_point = self._grasp_point(target.slot, target.shape)
        grasp_offset = grasp_point[2] - SHAPE_INFO[target.shape].rest_height
        # Bowls are hollow: the object lands on the bowl's base, not on its rim.
        dst_info = SHAPE_INFO[dst.shape]
        floor = 2 * dst_info.rest_height if dst.shape == "bowl" else dst_info.top_height
        return floor + SHAPE_INFO[target.shape].rest_height + grasp_offset + 0.008

    def _place_yaw(self, shape: str, dst: Any) -> Callable[[], float] | None:
        if dst.shape != "cube" or shape != "cube":
            return lambda: self._grasp_yaw
        # Turn the carried cube so its faces line up with the cube below.
        offset = self._grasp_yaw - self.sim.object_yaw(self._episode.target.slot)  # type: ignore[union-attr]
        return lambda: min(
            (self.sim.object_yaw(dst.slot) + offset + k * math.pi / 2 for k in range(-4, 5)),
            key=lambda yaw: abs(_wrap(yaw - self.sim.robot.ee_yaw(self.sim.data))),
        )

    # -- waypoint following --------------------------------------------------------------------
    def _follow_plan(self) -> np.ndarray:
        if self._grasp_missed():
            assert self._episode is not None
            self._plan = self._regrasp_plan(self._episode)
        while True:
            waypoint = self._plan[0]
            target = waypoint.target()
            error = target - self.sim.ee_pos()
            reached = float(np.linalg.norm(error)) < waypoint.tol
            if reached:
                self._held += 1
            done = self._held > waypoint.hold or (waypoint.until is not None
                                                  and waypoint.until())
            if reached and done and len(self._plan) > 1:
                self._plan.pop(0)
                self._held = 0
                continue
            return self._command(error, waypoint.grip, waypoint.yaw, waypoint.speed)

    def _grasp_missed(self) -> bool:
        """Whether the current waypoint's ``keep`` has failed ``patience`` steps in a row (the
        gripper closing beside the object, or the object slipping out of hand)."""
        waypoint = self._plan[0] if self._plan else None
        if waypoint is None or waypoint.keep is None or waypoint.keep():
            self._missed = 0
            return False
        self._missed += 1
        return self._missed >= waypoint.patience

    def _command(
        self,
        error: np.ndarray,
        grip: float,
        yaw: Callable[[], float] | None,
        limit: float = 1.0,
    ) -> np.ndarray:
        action = np.zeros(7, dtype=np.float32)
        action[:3] = np.clip(GAIN * error / ARM_EE_DELTA.scale[0], -limit, limit)
        if yaw is not None:
            yaw_error = _wrap(yaw() - self.sim.robot.ee_yaw(self.sim.data))
            action[5] = np.clip(GAIN * yaw_error / ARM_EE_DELTA.scale[5], -1.0, 1.0)
        action[6] = grip
        return action

    # -- push ----------------------------------------------------------------------------------
    def _push_action(self, episode: Episode) -> np.ndarray:
        assert episode.goal_xy is not None
        obj = self.sim.object_pos(episode.target.slot)
        goal = np.asarray(episode.goal_xy)
        to_goal = goal - obj[:2]
        direction = to_goal / max(float(np.linalg.norm(to_goal)), 1e-6)
        radius = SHAPE_INFO[episode.target.shape].footprint_radius
        behind = obj[:2] - direction * (radius + PUSH_STANDOFF)
        ee = self.sim.ee_pos()
        # Lateral offset of the gripper from the object's push line.
        rel = ee[:2] - obj[:2]
        lateral = abs(rel[0] * direction[1] - rel[1] * direction[0])
        along = float(rel @ direction)
        # Fingers side by side across the push line: a wide, flat pushing face.
        heading = math.atan2(direction[1], direction[0])
        current = self.sim.robot.ee_yaw(self.sim.data)
        yaw = min((heading + k * math.pi for k in range(-2, 3)),
                  key=lambda option: abs(_wrap(option - current)))
        if self._push_state == "push" and (lateral > PUSH_LATERAL_LIMIT or along > 0):
            self._push_state = "approach"
        if self._push_state == "approach":
            high = np.r_[behind, PUSH_CLEARANCE_Z]
            if np.linalg.norm(ee[:2] - behind) > 0.012:
                return self._command(high - ee, CLOSE, lambda: yaw)
            low = np.r_[behind, PUSH_Z]
            if abs(ee[2] - PUSH_Z) > 0.006:
                return self._command(low - ee, CLOSE, lambda: yaw)
            self._push_state = "push"
        reach = min(0.03, float(np.linalg.norm(to_goal)))
        carrot = np.r_[obj[:2] + direction * (reach - radius - 0.005), PUSH_Z]
        # Push slower than free motion: a fast shove tips cans over.
        return self._command(carrot - ee, CLOSE, lambda: yaw, limit=PUSH_SPEED)
