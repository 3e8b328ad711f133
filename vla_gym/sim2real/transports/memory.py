"""In-process transport for unit tests: a named bus stands in for a DDS domain.

Delivery is synchronous, in the publisher's thread, which makes tests deterministic. Like DDS,
a topic has one type: publishing another type on it is refused (logged and dropped), while a
subscription still guards against anything that slips through.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

from vla_gym.sim2real.messages import ros_type
from vla_gym.sim2real.transports.base import (
    QOS_DEFAULT,
    Publisher,
    Qos,
    Subscription,
    Transport,
    check_topic,
    log,
)

M = TypeVar("M")


class MemoryBus:
    """Topics -> subscriptions; keeps the last message of latched (transient-local) topics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subscriptions: dict[str, list[Subscription]] = defaultdict(list)
        self.types: dict[str, Any] = {}
        self.latched: dict[str, Any] = {}
        self.published: dict[str, int] = defaultdict(int)

    def claim(self, topic: str, msg_type: Any) -> bool:
        with self.lock:
            known = self.types.setdefault(topic, msg_type)
        if known is not msg_type:
            log.error("topic %s carries %s; refusing %s", topic, ros_type(known),
                      ros_type(msg_type))
            return False
        return True


_BUSES: dict[str, MemoryBus] = {}
_BUSES_LOCK = threading.Lock()


def get_bus(name: str = "default") -> MemoryBus:
    """The process-wide bus called ``name`` (one per simulated ROS domain)."""
    with _BUSES_LOCK:
        return _BUSES.setdefault(name, MemoryBus())


class _MemoryPublisher(Publisher[M]):
    def __init__(self, transport: MemoryTransport, topic: str, msg_type: type[M],
                 qos: Qos) -> None:
        super().__init__(topic, msg_type)
        self._transport, self._qos = transport, qos
        self._refused = 0

    def publish(self, msg: M) -> None:
        if self._transport.closed:
            return
        bus = self._transport.bus
        if bus.types.get(self.topic) is not type(msg):  # DDS would not match either
            self._refused += 1
            if self._refused == 1:
                bus.claim(self.topic, type(msg))  # logs the refusal once
            return
        with bus.lock:
            targets = list(bus.subscriptions[self.topic])
            bus.published[self.topic] += 1
            if self._qos.transient_local:
                bus.latched[self.topic] = msg
        for sub in targets:
            sub.deliver(msg)


class MemoryTransport(Transport):
    name = "memory"

    def __init__(self, bus: MemoryBus | str = "default") -> None:
        super().__init__()
        self.bus = get_bus(bus) if isinstance(bus, str) else bus
        self._mine: list[tuple[str, Subscription]] = []

    def subscribe(self, topic: str, msg_type: type[M], qos: Qos = QOS_DEFAULT,
                  callback: Callable[[M], None] | None = None) -> Subscription[M]:
        topic = check_topic(topic, msg_type)
        self.bus.claim(topic, msg_type)
        sub: Subscription[M] = Subscription(topic, msg_type, callback)
        with self.bus.lock:
            self.bus.subscriptions[topic].append(sub)
            latched = self.bus.latched.get(topic) if qos.transient_local else None
        self._mine.append((topic, sub))
        if latched is not None:
            sub.deliver(latched)
        return sub

    def publisher(self, topic: str, msg_type: type[M], qos: Qos = QOS_DEFAULT) -> Publisher[M]:
        topic = check_topic(topic, msg_type)
        self.bus.claim(topic, msg_type)
        return _MemoryPublisher(self, topic, msg_type, qos)

    def close(self) -> None:
        with self.bus.lock:
            for topic, sub in self._mine:
                if sub in self.bus.subscriptions[topic]:
                    self.bus.subscriptions[topic].remove(sub)
        self._mine.clear()
        super().close()
