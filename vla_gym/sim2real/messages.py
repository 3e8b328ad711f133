"""The ROS 2 messages the sim2real layer speaks, as plain dataclasses.

Field names, order and ROS field types are exactly those of the ROS 2 definitions, so every
backend derives its own representation from these classes (cyclonedds IDL types, rclpy message
classes, rosbags' types) and one table of classes is the single source of truth. ROS field types
are carried by ``Annotated`` aliases; ``ros_fields`` reads them back.

Values are plain Python: ints, floats, str, ``bytes`` for ``uint8[]`` and lists for other
sequences. Treat received messages as immutable: the in-memory transport shares them.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

Int32 = Annotated[int, "int32"]
UInt32 = Annotated[int, "uint32"]
UInt8 = Annotated[int, "uint8"]
Float64 = Annotated[float, "float64"]
Float64Seq = Annotated[list, "float64[]"]
Float64x9 = Annotated[list, "float64[9]"]
Float64x36 = Annotated[list, "float64[36]"]
StringSeq = Annotated[list, "string[]"]
Octets = Annotated[bytes, "uint8[]"]


class MessageError(ValueError):
    """A message that cannot be used: wrong type, malformed fields, unsupported encoding."""


# -- builtin_interfaces / std_msgs ------------------------------------------------------------
@dataclass
class Time:
    ROS_TYPE: ClassVar[str] = "builtin_interfaces/msg/Time"
    sec: Int32 = 0
    nanosec: UInt32 = 0

    @classmethod
    def from_sec(cls, seconds: float) -> Time:
        sec = int(seconds // 1)
        return cls(sec, min(int(round((seconds - sec) * 1e9)), 999_999_999))

    def to_sec(self) -> float:
        return self.sec + self.nanosec * 1e-9


@dataclass
class Header:
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/Header"
    stamp: Time = field(default_factory=Time)
    frame_id: str = ""


@dataclass
class String:
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/String"
    data: str = ""


@dataclass
class Bool:
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/Bool"
    data: bool = False


@dataclass
class MultiArrayDimension:
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/MultiArrayDimension"
    label: str = ""
    size: UInt32 = 0
    stride: UInt32 = 0


@dataclass
class MultiArrayLayout:
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/MultiArrayLayout"
    dim: list[MultiArrayDimension] = field(default_factory=list)
    data_offset: UInt32 = 0


@dataclass
class Float64MultiArray:
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/Float64MultiArray"
    layout: MultiArrayLayout = field(default_factory=MultiArrayLayout)
    data: Float64Seq = field(default_factory=list)


# -- sensor_msgs ------------------------------------------------------------------------------
@dataclass
class Image:
    ROS_TYPE: ClassVar[str] = "sensor_msgs/msg/Image"
    header: Header = field(default_factory=Header)
    height: UInt32 = 0
    width: UInt32 = 0
    encoding: str = ""
    is_bigendian: UInt8 = 0
    step: UInt32 = 0
    data: Octets = b""


@dataclass
class CompressedImage:
    ROS_TYPE: ClassVar[str] = "sensor_msgs/msg/CompressedImage"
    header: Header = field(default_factory=Header)
    format: str = ""
    data: Octets = b""


@dataclass
class JointState:
    ROS_TYPE: ClassVar[str] = "sensor_msgs/msg/JointState"
    header: Header = field(default_factory=Header)
    name: StringSeq = field(default_factory=list)
    position: Float64Seq = field(default_factory=list)
    velocity: Float64Seq = field(default_factory=list)
    effort: Float64Seq = field(default_factory=list)


# -- geometry_msgs ----------------------------------------------------------------------------
@dataclass
class Vector3:
    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/Vector3"
    x: Float64 = 0.0
    y: Float64 = 0.0
    z: Float64 = 0.0


@dataclass
class Point:
    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/Point"
    x: Float64 = 0.0
    y: Float64 = 0.0
    z: Float64 = 0.0


@dataclass
class Quaternion:
    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/Quaternion"
    x: Float64 = 0.0
    y: Float64 = 0.0
    z: Float64 = 0.0
    w: Float64 = 1.0


@dataclass
class Pose:
    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/Pose"
    position: Point = field(default_factory=Point)
    orientation: Quaternion = field(default_factory=Quaternion)


@dataclass
class PoseStamped:
    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/PoseStamped"
    header: Header = field(default_factory=Header)
    pose: Pose = field(default_factory=Pose)


@dataclass
class PoseWithCovariance:
    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/PoseWithCovariance"
    pose: Pose = field(default_factory=Pose)
    covariance: Float64x36 = field(default_factory=lambda: [0.0] * 36)


@dataclass
class Twist:
    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/Twist"
    linear: Vector3 = field(default_factory=Vector3)
    angular: Vector3 = field(default_factory=Vector3)


@dataclass
class TwistStamped:
    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/TwistStamped"
    header: Header = field(default_factory=Header)
    twist: Twist = field(default_factory=Twist)


@dataclass
class TwistWithCovariance:
    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/TwistWithCovariance"
    twist: Twist = field(default_factory=Twist)
    covariance: Float64x36 = field(default_factory=lambda: [0.0] * 36)


# -- nav_msgs ---------------------------------------------------------------------------------
@dataclass
class Odometry:
    ROS_TYPE: ClassVar[str] = "nav_msgs/msg/Odometry"
    header: Header = field(default_factory=Header)
    child_frame_id: str = ""
    pose: PoseWithCovariance = field(default_factory=PoseWithCovariance)
    twist: TwistWithCovariance = field(default_factory=TwistWithCovariance)


# The messages a transport may publish or subscribe to (nested-only types are excluded).
TOPIC_TYPES: tuple[Any, ...] = (
    String, Bool, Float64MultiArray, Image, CompressedImage, JointState,
    PoseStamped, Twist, TwistStamped, Odometry,
)
ALL_TYPES: tuple[Any, ...] = (
    Time, Header, MultiArrayDimension, MultiArrayLayout, Vector3, Point, Quaternion, Pose,
    PoseWithCovariance, TwistWithCovariance, *TOPIC_TYPES,
)
BY_ROS_TYPE: dict[str, Any] = {cls.ROS_TYPE: cls for cls in ALL_TYPES}


# -- field introspection ----------------------------------------------------------------------
@dataclass(frozen=True)
class RosField:
    """One field: ``kind`` is primitive | string | bytes | struct | sequence | array |
    string_sequence | struct_sequence; ``element`` the ROS primitive name or nested class."""

    name: str
    kind: str
    element: Any = None
    length: int | None = None


@functools.cache
def ros_fields(cls: Any) -> tuple[RosField, ...]:
    """The ROS description of ``cls``'s fields, in declaration (= wire) order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return tuple(_describe(f.name, hints[f.name]) for f in dataclasses.fields(cls))


def _describe(name: str, hint: Any) -> RosField:
    if typing.get_origin(hint) is Annotated:
        ros = typing.get_args(hint)[1]
        if ros == "uint8[]":
            return RosField(name, "bytes")
        if ros == "string[]":
            return RosField(name, "string_sequence")
        if ros.endswith("[]"):
            return RosField(name, "sequence", ros[:-2])
        if ros.endswith("]"):
            element, length = ros[:-1].split("[")
            return RosField(name, "array", element, int(length))
        return RosField(name, "primitive", ros)
    if hint is str:
        return RosField(name, "string")
    if hint is bool:
        return RosField(name, "primitive", "bool")
    if typing.get_origin(hint) is list:
        return RosField(name, "struct_sequence", typing.get_args(hint)[0])
    if dataclasses.is_dataclass(hint):
        return RosField(name, "struct", hint)
    raise TypeError(f"field {name!r}: no ROS mapping for {hint!r}")


def dds_typename(cls: Any) -> str:
    """ROS 2's DDS type name, e.g. ``sensor_msgs::msg::dds_::Image_``."""
    package, _, name = cls.ROS_TYPE.split("/")
    return f"{package}::msg::dds_::{name}_"


def ros_type(cls: Any) -> str:
    """``sensor_msgs/msg/Image`` for a message class or instance."""
    return str(cls.ROS_TYPE)


def to_foreign(msg: Any, make: Any, sequence: Any = list, octets: Any = None) -> Any:
    """Our dataclass -> a foreign message built by ``make(cls)(**fields)``.

    ``sequence`` converts numeric sequences and ``octets`` ``uint8[]`` bytes (cyclonedds takes
    lists and bytes, rosbags numpy arrays for both).
    """
    cls: Any = type(msg)
    kwargs: dict[str, Any] = {}
    for f in ros_fields(cls):
        value = getattr(msg, f.name)
        if f.kind == "struct":
            value = to_foreign(value, make, sequence, octets)
        elif f.kind == "struct_sequence":
            value = [to_foreign(v, make, sequence, octets) for v in value]
        elif f.kind == "bytes" and octets is not None:
            value = octets(value)
        elif f.kind in ("sequence", "array"):
            value = sequence(value)
        elif f.kind == "string_sequence":
            value = list(value)
        kwargs[f.name] = value
    return make(cls)(**kwargs)


def from_foreign(obj: Any, cls: Any) -> Any:
    """A foreign message (cyclonedds, rclpy, rosbags) -> our dataclass ``cls``, by field name."""
    kwargs: dict[str, Any] = {}
    for f in ros_fields(cls):
        value = getattr(obj, f.name)
        if f.kind == "struct":
            value = from_foreign(value, f.element)
        elif f.kind == "struct_sequence":
            value = [from_foreign(v, f.element) for v in value]
        elif f.kind in ("sequence", "array"):
            value = [float(v) for v in value] if f.element == "float64" else [int(v) for v in value]
        elif f.kind == "string_sequence":
            value = [str(v) for v in value]
        elif f.kind == "bytes":
            value = bytes(value)
        elif f.kind == "primitive":
            value = _primitive(f.element, value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _primitive(ros_type: str, value: Any) -> Any:
    if ros_type == "float64":
        return float(value)
    if ros_type == "bool":
        return bool(value)
    return int(value)
