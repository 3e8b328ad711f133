"""Transports: ``auto | rclpy | dds | memory`` behind one interface (see ``base``).

``auto`` picks rclpy whenever it imports (it speaks whatever RMW the ROS 2 install uses), else
the pure-DDS backend. ``memory`` is never picked automatically: it reaches only this process.
"""

from __future__ import annotations

from typing import Any

from vla_gym.sim2real.transports.base import (
    INSTALL_HINT,
    QOS_DEFAULT,
    QOS_LATCHED,
    QOS_SENSOR_DATA,
    Publisher,
    Qos,
    Stamped,
    Subscription,
    Transport,
    log,
)

TRANSPORTS = ("auto", "rclpy", "dds", "memory")


def resolve_kind(kind: str) -> str:
    """``auto`` -> the backend that would be used; unknown names -> ValueError."""
    if kind not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {kind!r}")
    if kind != "auto":
        return kind
    from vla_gym.sim2real.transports.rclpy import rclpy_available

    if rclpy_available():
        return "rclpy"
    try:
        import cyclonedds  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"no ROS 2 transport: rclpy is not installed (source a ROS 2 setup) "
                          f"and cyclonedds is missing ({INSTALL_HINT})") from exc
    return "dds"


def make_transport(kind: str = "auto", **options: Any) -> Transport:
    """A transport of ``kind``. Options: ``domain_id`` (rclpy, dds), ``config`` (dds XML),
    ``bus`` (memory), ``node_name`` (rclpy)."""
    chosen = resolve_kind(kind)
    if chosen == "memory":
        from vla_gym.sim2real.transports.memory import MemoryTransport

        return MemoryTransport(options.get("bus", "default"))
    if chosen == "dds":
        from vla_gym.sim2real.transports.dds import DdsTransport

        return DdsTransport(options.get("domain_id"), options.get("config"))
    from vla_gym.sim2real.transports.rclpy import RclpyTransport

    transport = RclpyTransport(options.get("node_name"), options.get("domain_id"))
    log.info("transport: rclpy")
    return transport


__all__ = [
    "QOS_DEFAULT", "QOS_LATCHED", "QOS_SENSOR_DATA", "TRANSPORTS", "Publisher", "Qos", "Stamped",
    "Subscription", "Transport", "make_transport", "resolve_kind",
]
