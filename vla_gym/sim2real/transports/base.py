"""The one small transport interface every backend implements.

A control loop wants the *latest* value of each input, not a queue of stale ones, so a
subscription is a latest-value holder with the time it arrived; publishing is fire-and-forget.
Backends call ``Subscription.deliver`` from whatever thread their middleware uses.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from vla_gym.sim2real.messages import TOPIC_TYPES, ros_type

log = logging.getLogger("vla_gym.sim2real")
M = TypeVar("M")
INSTALL_HINT = "pip install 'vla_gym[ros2]'"


@dataclass(frozen=True)
class Qos:
    """The QoS knobs ROS 2's standard profiles differ in."""

    reliable: bool = True
    depth: int = 10
    transient_local: bool = False


# rclpy's qos_profile_system_default-like "default" and qos_profile_sensor_data.
QOS_DEFAULT = Qos(reliable=True, depth=10)
QOS_SENSOR_DATA = Qos(reliable=False, depth=5)
# What ROS 2 calls "latched": late joiners get the last message (instructions, episode info).
QOS_LATCHED = Qos(reliable=True, depth=1, transient_local=True)


@dataclass(frozen=True)
class Stamped(Generic[M]):
    """A received message, when it arrived (``time.monotonic``) and its arrival number."""

    msg: M
    received: float
    count: int

    def age(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.received


class Subscription(Generic[M]):
    """Latest value of one topic. Thread-safe; ``wait_newer`` blocks without spinning."""

    def __init__(self, topic: str, msg_type: type[M],
                 callback: Callable[[M], None] | None = None) -> None:
        self.topic, self.msg_type, self.callback = topic, msg_type, callback
        self._cond = threading.Condition()
        self._latest: Stamped[M] | None = None
        self._count = 0
        self.rejected = 0

    def deliver(self, msg: Any) -> None:
        """Called by the backend for each arriving message; wrong types are dropped loudly."""
        if not isinstance(msg, self.msg_type):
            self.rejected += 1
            log.error("topic %s: dropped a %s message, expected %s", self.topic,
                      getattr(msg, "ROS_TYPE", type(msg).__name__), ros_type(self.msg_type))
            return
        with self._cond:
            self._count += 1
            self._latest = Stamped(msg, time.monotonic(), self._count)
            self._cond.notify_all()
        if self.callback is not None:
            try:
                self.callback(msg)
            except Exception:  # a user callback must not kill the middleware's thread
                log.exception("topic %s: callback failed", self.topic)

    def latest(self) -> Stamped[M] | None:
        return self._latest

    @property
    def count(self) -> int:
        return self._count

    def wait_newer(self, count: int, timeout: float) -> Stamped[M] | None:
        """The latest value once its arrival number exceeds ``count``; None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._count <= count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._latest


class Publisher(ABC, Generic[M]):
    def __init__(self, topic: str, msg_type: type[M]) -> None:
        self.topic, self.msg_type = topic, msg_type

    @abstractmethod
    def publish(self, msg: M) -> None: ...


class Transport(ABC):
    """``subscribe`` (latest value), ``publisher`` (``.publish(msg)``) and ``close``."""

    name = "base"

    def __init__(self) -> None:
        self.closed = False

    @abstractmethod
    def subscribe(self, topic: str, msg_type: type[M], qos: Qos = QOS_DEFAULT,
                  callback: Callable[[M], None] | None = None) -> Subscription[M]: ...

    @abstractmethod
    def publisher(self, topic: str, msg_type: type[M],
                  qos: Qos = QOS_DEFAULT) -> Publisher[M]: ...

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_topic(topic: str, msg_type: Any) -> str:
    """Normalise a ROS topic name to absolute form and check the type is one we speak."""
    if msg_type not in TOPIC_TYPES:
        names = [ros_type(t) for t in TOPIC_TYPES]
        raise TypeError(f"{getattr(msg_type, '__name__', msg_type)} is not a topic type; "
                        f"use one of {names}")
    name = topic.strip()
    if not name or any(c.isspace() for c in name) or "//" in name:
        raise ValueError(f"invalid topic name {topic!r}")
    return name if name.startswith("/") else "/" + name
