"""Robot files: what a real (or bridged) robot looks like on ROS 2, loaded from YAML.

A robot file names the sim env it mirrors and says where everything is: topics, rates, frames,
joint names, command scales and safety limits. Parsing stays here, at the edge; the rest of the
layer takes the frozen dataclasses. Unknown keys are errors (a typo must not silently disable a
limit).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

ROBOT_FILES = ("turtlebot_like.yaml", "servo_arm.yaml")


@dataclass(frozen=True)
class Topics:
    """Topic names. ``command``: Twist (base) or TwistStamped (arm, MoveIt Servo)."""

    command: str = "/cmd_vel"
    odom: str = "/odom"
    joint_states: str = "/joint_states"
    ee_pose: str = "/ee_pose"
    gripper: str = "/gripper_controller/commands"
    instruction: str = "/vla/instruction"
    estop: str = "/vla/estop"
    features: str = "/vla/features"
    # Namespace of a sim bridge's reset/episode/info/expert topics; "" for a real robot.
    sim: str = ""


@dataclass(frozen=True)
class Camera:
    topic: str = "/camera/image_raw"
    compressed: bool = False  # True: sensor_msgs/CompressedImage (image_transport's /compressed)
    encoding: str = "rgb8"  # what a bridge publishes; the robot env decodes any supported one
    rate_hz: float = 30.0
    frame_id: str = "camera_link"


@dataclass(frozen=True)
class Frames:
    base: str = "base_link"
    odom: str = "odom"
    command: str = "base_link"  # frame of TwistStamped commands (MoveIt Servo's planning frame)


@dataclass(frozen=True)
class Arm:
    joints: tuple[str, ...] = ()
    gripper_joints: tuple[str, ...] = ()  # opening = sum of their positions
    gripper_open: float = 0.04  # gripper command value sent for grip = -1
    gripper_closed: float = 0.0  # ... and for grip = +1
    # wxyz; the sign of q is chosen near it (the sim arm: gripper pointing down, 180 deg about y)
    ee_quat_reference: tuple[float, ...] = (0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class Limits:
    """Per command dimension: base [v, omega]; arm [vx, vy, vz, wx, wy, wz] (m/s, rad/s)."""

    max_velocity: tuple[float, ...] = ()
    max_accel: tuple[float, ...] | None = None  # None: the action contract's rate_limit, if any
    # Base: box in the odometry frame relative to the episode's start pose (x, y).
    # Arm: box for the end effector in the base frame (x, y, z).
    workspace_low: tuple[float, ...] | None = None
    workspace_high: tuple[float, ...] | None = None


@dataclass(frozen=True)
class RobotConfig:
    name: str
    kind: Literal["base", "arm"]
    sim_env: str
    action_contract: str
    sim_kwargs: dict[str, Any] = field(default_factory=dict)
    rate_hz: float | None = None  # control rate; None = 1 / the sim env's dt
    state_rate_hz: float = 50.0  # odometry / joint state rate a bridge publishes
    topics: Topics = field(default_factory=Topics)
    camera: Camera = field(default_factory=Camera)
    frames: Frames = field(default_factory=Frames)
    arm: Arm = field(default_factory=Arm)
    limits: Limits = field(default_factory=Limits)
    scales: tuple[float, ...] | None = None  # per-dim calibration of the physical command
    instruction: str | None = None  # default instruction when no topic/parameter gives one
    watchdog_timeout_s: float = 0.3  # no fresh image/state (or command) -> zero command
    fault_timeout_s: float = 3.0  # inputs silent this long -> the episode is truncated
    command_timeout_s: float = 0.5  # bridge: stop without commands (diff_drive_controller)
    reset_timeout_s: float = 10.0

    @property
    def command_dim(self) -> int:
        return 2 if self.kind == "base" else 6

    def __post_init__(self) -> None:
        if self.kind not in ("base", "arm"):
            raise ValueError(f"robot {self.name!r}: kind must be 'base' or 'arm'")
        n = self.command_dim
        lim = self.limits
        if len(lim.max_velocity) != n:
            raise ValueError(f"robot {self.name!r}: limits.max_velocity needs {n} values")
        if any(v <= 0 for v in lim.max_velocity):
            raise ValueError(f"robot {self.name!r}: limits.max_velocity must be positive")
        if lim.max_accel is not None and (len(lim.max_accel) != n or min(lim.max_accel) <= 0):
            raise ValueError(f"robot {self.name!r}: limits.max_accel needs {n} positive values")
        box = 2 if self.kind == "base" else 3
        if (lim.workspace_low is None) != (lim.workspace_high is None):
            raise ValueError(f"robot {self.name!r}: give both workspace_low and workspace_high")
        if lim.workspace_low is not None and lim.workspace_high is not None and not (
                len(lim.workspace_low) == len(lim.workspace_high) == box
                and all(lo < hi for lo, hi in zip(lim.workspace_low, lim.workspace_high))):
            raise ValueError(f"robot {self.name!r}: workspace needs {box} (low < high) values")
        if self.scales is not None and len(self.scales) != n:
            raise ValueError(f"robot {self.name!r}: scales needs {n} values")
        if self.kind == "arm" and (not self.arm.joints or not self.arm.gripper_joints):
            raise ValueError(f"robot {self.name!r}: an arm needs arm.joints and "
                             "arm.gripper_joints")
        if self.rate_hz is not None and not 0 < self.rate_hz <= 1000:
            raise ValueError(f"robot {self.name!r}: rate_hz must be in (0, 1000]")
        for name in ("watchdog_timeout_s", "fault_timeout_s", "command_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"robot {self.name!r}: {name} must be positive")

    def sim_topic(self, leaf: str) -> str:
        """A sim-bridge topic (``reset``, ``episode``, ``info``, ``expert_action``)."""
        return f"{self.topics.sim.rstrip('/') or '/sim'}/{leaf}"


def robot_file(name: str) -> Path:
    """Path of a robot file shipped with vla_gym (``turtlebot_like.yaml``, ``servo_arm.yaml``)."""
    path = Path(str(resources.files("vla_gym.sim2real").joinpath("robots").joinpath(name)))
    if not path.is_file():
        raise FileNotFoundError(f"no shipped robot file {name!r}; shipped: {ROBOT_FILES}")
    return path


def load_robot(source: str | Path | dict[str, Any], **overrides: Any) -> RobotConfig:
    """Load a robot file (a path, a shipped file name, or a dict); ``overrides`` are merged
    into it section by section, e.g. ``topics={"sim": "/sim"}`` or ``rate_hz=20``."""
    if isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        if not path.exists() and str(source) in ROBOT_FILES:
            path = robot_file(str(source))
        data = _read_yaml(path)
    return _build(RobotConfig, _merge(data, overrides), "robot")


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover
        raise ImportError("robot files need pyyaml: pip install 'vla_gym[ros2]'") from exc
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a robot file is a YAML mapping")
    return data


def _build(cls: type, data: Any, where: str) -> Any:
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid: {names}")
    kwargs = {k: _value(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _value(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    base = options[0] if typing.get_origin(hint) in (typing.Union, _union_type()) else hint
    if isinstance(base, type) and dataclasses.is_dataclass(base):
        return _build(base, value, where)
    if typing.get_origin(base) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        kind = typing.get_args(base)[0]
        return tuple(kind(v) for v in value)
    if base is float:
        return float(value)
    return value


def _union_type() -> Any:
    import types

    return types.UnionType
