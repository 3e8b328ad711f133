"""rclpy transport: the first choice wherever ROS 2 is installed (any RMW, Fast DDS included).

Our dataclasses map field by field onto the ``rosidl`` generated classes (same names), so the
rest of the layer never sees rclpy types. An executor spins the node in a daemon thread;
subscription callbacks only store the latest value.
"""

from __future__ import annotations

import array
import importlib
import itertools
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from vla_gym.sim2real.messages import from_foreign, ros_fields, ros_type
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
_names = itertools.count()


def rclpy_available() -> bool:
    try:
        import rclpy  # noqa: F401
    except ImportError:
        return False
    return True


def ros_class(cls: Any) -> Any:
    """The rosidl Python class for one of our message classes."""
    package, _, name = ros_type(cls).split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def to_ros(msg: Any) -> Any:
    """Our dataclass -> rclpy message; ``uint8[]`` goes in as array('B') (a memcpy)."""
    cls: Any = type(msg)
    out = ros_class(cls)()
    for f in ros_fields(cls):
        value = getattr(msg, f.name)
        if f.kind == "struct":
            value = to_ros(value)
        elif f.kind == "struct_sequence":
            value = [to_ros(v) for v in value]
        elif f.kind == "bytes":
            value = array.array("B", value)
        elif f.kind in ("sequence", "array", "string_sequence"):
            value = list(value)
        setattr(out, f.name, value)
    return out


def _profile(qos: Qos) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=qos.depth,
        reliability=ReliabilityPolicy.RELIABLE if qos.reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if qos.transient_local
                    else DurabilityPolicy.VOLATILE),
    )


class _RclpyPublisher(Publisher[M]):
    def __init__(self, transport: RclpyTransport, topic: str, msg_type: type[M], pub: Any):
        super().__init__(topic, msg_type)
        self._transport, self._pub = transport, pub

    def publish(self, msg: M) -> None:
        if self._transport.closed:
            return
        if not isinstance(msg, self.msg_type):
            log.error("topic %s: refusing to publish %s", self.topic, type(msg).__name__)
            return
        self._pub.publish(to_ros(msg))


class RclpyTransport(Transport):
    """One rclpy node (``ROS_DOMAIN_ID`` and ``RMW_IMPLEMENTATION`` as the ROS 2 install has)."""

    name = "rclpy"

    def __init__(self, node_name: str | None = None, domain_id: int | None = None) -> None:
        super().__init__()
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self._context = Context()
        kwargs = {"domain_id": domain_id} if domain_id is not None else {}
        rclpy.init(context=self._context, **kwargs)
        name = node_name or f"vla_gym_{os.getpid()}_{next(_names)}"
        self._node = rclpy.create_node(name, context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._thread = threading.Thread(target=self._spin, name=f"{name}-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception as exc:  # shutdown races end here
            log.debug("rclpy executor stopped: %s", exc)

    def subscribe(self, topic: str, msg_type: type[M], qos: Qos = QOS_DEFAULT,
                  callback: Callable[[M], None] | None = None) -> Subscription[M]:
        topic = check_topic(topic, msg_type)
        sub: Subscription[M] = Subscription(topic, msg_type, callback)

        def on_msg(ros_msg: Any) -> None:
            try:
                sub.deliver(from_foreign(ros_msg, msg_type))
            except Exception as exc:
                log.error("topic %s: unusable message: %s", topic, exc)

        self._node.create_subscription(ros_class(msg_type), topic, on_msg, _profile(qos))
        return sub

    def publisher(self, topic: str, msg_type: type[M], qos: Qos = QOS_DEFAULT) -> Publisher[M]:
        topic = check_topic(topic, msg_type)
        pub = self._node.create_publisher(ros_class(msg_type), topic, _profile(qos))
        return _RclpyPublisher(self, topic, msg_type, pub)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self._executor.shutdown(timeout_sec=1.0)
        self._node.destroy_node()
        self._context.try_shutdown()
        self._thread.join(timeout=2.0)
