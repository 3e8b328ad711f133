"""rosbags as a peer: CDR bytes of our messages by an independent serialiser, and rosbag2 files.

``rosbags`` is pure Python and knows ROS 2's message definitions; the byte-equality tests use it
to check what the DDS backend puts on the wire, and ``deploy --record`` writes mcap bags with it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from vla_gym.sim2real.messages import from_foreign, ros_type, to_foreign
from vla_gym.sim2real.transports.base import INSTALL_HINT


@functools.cache
def typestore() -> Any:
    try:
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(f"recording and CDR checks need rosbags: {INSTALL_HINT}") from exc
    return get_typestore(Stores.ROS2_HUMBLE)


def to_rosbags(msg: Any) -> Any:
    store = typestore()
    return to_foreign(msg, lambda cls: store.types[cls.ROS_TYPE],
                      lambda v: np.asarray(v, dtype=np.float64),
                      lambda b: np.frombuffer(b, dtype=np.uint8))


def serialize_cdr(msg: Any) -> bytes:
    """XCDR1 little-endian bytes with the 4-byte encapsulation header, as ROS 2 sends them."""
    return bytes(typestore().serialize_cdr(to_rosbags(msg), ros_type(msg)))


def deserialize_cdr(data: bytes, cls: Any) -> Any:
    return from_foreign(typestore().deserialize_cdr(data, ros_type(cls)), cls)


class BagWriter:
    """A rosbag2 (mcap) bag: one connection per topic, opened on first write."""

    def __init__(self, path: str | Path) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists; rosbag2 writes a new directory")
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.messages = 0

    def write(self, topic: str, msg: Any, stamp_ns: int) -> None:
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, ros_type(msg), typestore=typestore())
            self._connections[topic] = conn
        self._writer.write(conn, int(stamp_ns), serialize_cdr(msg))
        self.messages += 1

    def close(self) -> None:
        self._writer.close()


def read_bag(path: str | Path) -> list[tuple[str, int, Any]]:
    """(topic, timestamp ns, our message) for every message of a bag, in time order."""
    from rosbags.rosbag2 import Reader

    from vla_gym.sim2real.messages import BY_ROS_TYPE

    out = []
    with Reader(Path(path)) as reader:
        for conn, stamp, raw in reader.messages():
            out.append((conn.topic, stamp, deserialize_cdr(raw, BY_ROS_TYPE[conn.msgtype])))
    return out
