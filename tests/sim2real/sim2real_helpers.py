"""Helpers shared by the sim2real tests: random messages and a recording command listener."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from hypothesis import strategies as st

from vla_gym.sim2real.messages import ros_fields

INT_RANGES = {"int32": (-2**31, 2**31 - 1), "uint32": (0, 2**32 - 1), "uint8": (0, 255)}
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=12)


def _float() -> st.SearchStrategy[float]:
    return st.floats(allow_nan=False, allow_infinity=True, width=64)


def _primitive(ros_type: str) -> st.SearchStrategy[Any]:
    if ros_type == "float64":
        return _float()
    if ros_type == "bool":
        return st.booleans()
    lo, hi = INT_RANGES[ros_type]
    return st.integers(lo, hi)


def message_strategy(cls: type) -> st.SearchStrategy[Any]:
    """Random instances of a message class, every field drawn from its ROS type's range."""
    fields = {}
    for f in ros_fields(cls):
        if f.kind == "primitive":
            fields[f.name] = _primitive(f.element)
        elif f.kind == "string":
            fields[f.name] = TEXT
        elif f.kind == "bytes":
            fields[f.name] = st.binary(max_size=300)
        elif f.kind == "sequence":
            fields[f.name] = st.lists(_primitive(f.element), max_size=9)
        elif f.kind == "array":
            fields[f.name] = st.lists(_primitive(f.element), min_size=f.length,
                                      max_size=f.length)
        elif f.kind == "string_sequence":
            fields[f.name] = st.lists(TEXT, max_size=4)
        elif f.kind == "struct":
            fields[f.name] = message_strategy(f.element)
        else:
            fields[f.name] = st.lists(message_strategy(f.element), max_size=3)
    return st.builds(cls, **fields)


class CommandLog:
    """Every command a robot receives, with its arrival time (monotonic)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: list[tuple[float, np.ndarray]] = []

    def __call__(self, msg: Any) -> None:
        twist = getattr(msg, "twist", msg)
        values = np.array([twist.linear.x, twist.linear.y, twist.linear.z,
                           twist.angular.x, twist.angular.y, twist.angular.z])
        with self.lock:
            self.entries.append((time.monotonic(), values))

    def since(self, t: float) -> list[tuple[float, np.ndarray]]:
        with self.lock:
            return [(when, v) for when, v in self.entries if when >= t]

    def first_zero_after(self, t: float) -> float | None:
        for when, values in self.since(t):
            if not np.any(values):
                return when
        return None


class FakeBaseRobot:
    """A diff-drive robot on a transport: camera and odometry threads, a command log.

    ``camera_on`` / ``odom_on`` switch the publishers; ``image`` makes the next frame (swap it
    for a wrong size or a bad encoding).
    """

    def __init__(self, transport: Any, robot: Any, rate_hz: float = 30.0) -> None:
        from vla_gym.sim2real.convert import array_to_odometry, rgb_to_image
        from vla_gym.sim2real.messages import Bool, Image, Odometry, Twist

        self._odometry = array_to_odometry
        self.image = lambda: rgb_to_image(np.full((120, 160, 3), 90, np.uint8), time.time())
        self.cam = transport.publisher(robot.camera.topic, Image)
        self.odom = transport.publisher(robot.topics.odom, Odometry)
        self.estop = transport.publisher(robot.topics.estop, Bool)
        self.commands = CommandLog()
        transport.subscribe(robot.topics.command, Twist, callback=self.commands)
        self.camera_on = self.odom_on = True
        self.camera_stopped_at: float | None = None
        self.period = 1.0 / rate_hz
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            with self._lock:
                if self.camera_on:
                    self.cam.publish(self.image())
            if self.odom_on:
                self.odom.publish(self._odometry(1.0, 2.0, 0.5, 0.0, 0.0, time.time()))

    def stop_camera(self) -> float:
        with self._lock:  # no frame leaves after this returns
            self.camera_on = False
            self.camera_stopped_at = time.monotonic()
        return self.camera_stopped_at

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
