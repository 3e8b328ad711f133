"""numpy <-> message conversions: images (raw and compressed), odometry, twists, joint states.

Every decoder validates what it reads and raises ``MessageError`` with a sentence a person can
act on, because these are the messages a misconfigured camera or driver gets wrong.
"""

from __future__ import annotations

import io
import math

import numpy as np

from vla_gym.sim2real.messages import (
    CompressedImage,
    Header,
    Image,
    JointState,
    MessageError,
    Odometry,
    Point,
    Pose,
    PoseStamped,
    PoseWithCovariance,
    Quaternion,
    Time,
    Twist,
    TwistStamped,
    TwistWithCovariance,
    Vector3,
)

# encoding -> (channels, dtype, channel order to get RGB; None for mono)
ENCODINGS: dict[str, tuple[int, str, tuple[int, ...] | None]] = {
    "rgb8": (3, "u1", (0, 1, 2)),
    "bgr8": (3, "u1", (2, 1, 0)),
    "rgba8": (4, "u1", (0, 1, 2)),
    "bgra8": (4, "u1", (2, 1, 0)),
    "mono8": (1, "u1", None),
    "8UC1": (1, "u1", None),
    "8UC3": (3, "u1", (2, 1, 0)),  # OpenCV's default channel order is BGR
    "mono16": (1, "u2", None),
}
MAX_IMAGE_BYTES = 64 * 1024 * 1024


def header(stamp: float, frame_id: str = "") -> Header:
    return Header(Time.from_sec(stamp), frame_id)


# -- raw images -------------------------------------------------------------------------------
def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> uint8 (H, W, 3) RGB; MessageError when it cannot be decoded.

    rgb8 comes back as a read-only view of the message bytes (no copy: this runs every frame);
    other encodings are converted into a new array.
    """
    if msg.encoding not in ENCODINGS:
        raise MessageError(
            f"image encoding {msg.encoding!r} is not supported; use one of {sorted(ENCODINGS)}")
    channels, dtype, order = ENCODINGS[msg.encoding]
    itemsize = np.dtype(dtype).itemsize
    row = msg.width * channels * itemsize
    if msg.width == 0 or msg.height == 0:
        raise MessageError(f"image is empty ({msg.width}x{msg.height})")
    if msg.step < row:
        raise MessageError(f"image step {msg.step} is shorter than a {msg.width}-pixel "
                           f"{msg.encoding} row ({row} bytes)")
    if len(msg.data) < msg.step * msg.height:
        raise MessageError(f"image data has {len(msg.data)} bytes; {msg.height} rows of step "
                           f"{msg.step} need {msg.step * msg.height}")
    rows = np.frombuffer(msg.data, np.uint8, msg.step * msg.height).reshape(msg.height, msg.step)
    pixels = rows[:, :row]
    if dtype == "u2":
        endian = ">" if msg.is_bigendian else "<"
        wide = np.ascontiguousarray(pixels).view(endian + dtype)
        array = (wide >> 8).astype(np.uint8).reshape(msg.height, msg.width, channels)
    else:
        array = pixels.reshape(msg.height, msg.width, channels)
    if order is None:
        return np.repeat(array, 3, axis=2)
    if order == (0, 1, 2):
        return array[:, :, :3]
    return np.ascontiguousarray(array[:, :, 2::-1])


def rgb_to_image(rgb: np.ndarray, stamp: float = 0.0, frame_id: str = "",
                 encoding: str = "rgb8") -> Image:
    """uint8 (H, W, 3) RGB -> sensor_msgs/Image in ``encoding`` (rgb8, bgr8 or mono8)."""
    rgb = _check_rgb(rgb)
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding == "mono8":
        weights = np.array([0.299, 0.587, 0.114])
        pixels = np.clip(rgb @ weights + 0.5, 0, 255).astype(np.uint8)[:, :, None]
    else:
        raise MessageError(f"cannot encode images as {encoding!r}; use rgb8, bgr8 or mono8")
    height, width, channels = pixels.shape
    return Image(header(stamp, frame_id), height, width, encoding, 0, width * channels,
                 np.ascontiguousarray(pixels).tobytes())


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise MessageError(f"expected a uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    return rgb


# -- compressed images ------------------------------------------------------------------------
def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png, as image_transport writes) -> RGB array."""
    from PIL import Image as PilImage

    if not msg.data:
        raise MessageError("compressed image has no data")
    try:
        with PilImage.open(io.BytesIO(msg.data)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:  # PIL raises several types for corrupt data
        raise MessageError(f"cannot decode compressed image ({msg.format!r}): {exc}") from None


def rgb_to_compressed(rgb: np.ndarray, stamp: float = 0.0, frame_id: str = "",
                      fmt: str = "jpeg", quality: int = 90) -> CompressedImage:
    from PIL import Image as PilImage

    if fmt not in ("jpeg", "png"):
        raise MessageError(f"compressed format must be jpeg or png, got {fmt!r}")
    buffer = io.BytesIO()
    PilImage.fromarray(_check_rgb(rgb)).save(buffer, format=fmt.upper(), quality=quality)
    # image_transport's format string: "<encoding>; <codec> compressed <codec-encoding>"
    return CompressedImage(header(stamp, frame_id), f"rgb8; {fmt} compressed rgb8",
                           buffer.getvalue())


def fit_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to square, then resize to ``size`` x ``size``; always a new, writable array.

    The sim camera is square; cropping keeps the aspect ratio a policy was trained on. Shrinking
    uses an integer box reduction first (``reducing_gap``): 640x480 -> 96x96 in ~0.4 ms.
    """
    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = rgb[top:top + side, left:left + side]
    if side == size:
        return np.array(square, dtype=np.uint8, order="C")
    from PIL import Image as PilImage

    img = PilImage.fromarray(np.ascontiguousarray(square))
    if side > size:
        img = img.resize((size, size), PilImage.Resampling.BOX, reducing_gap=2.0)
    else:
        img = img.resize((size, size), PilImage.Resampling.BILINEAR)
    return np.asarray(img).copy()


# -- poses and twists -------------------------------------------------------------------------
def yaw_to_quaternion(yaw: float) -> Quaternion:
    return Quaternion(0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0))


def quaternion_to_yaw(q: Quaternion) -> float:
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def odometry_to_array(msg: Odometry) -> np.ndarray:
    """Odometry -> float64 [x, y, yaw, v, omega] (pose in the odom frame, body-frame twist)."""
    p, t = msg.pose.pose, msg.twist.twist
    values = np.array([p.position.x, p.position.y, quaternion_to_yaw(p.orientation),
                       t.linear.x, t.angular.z])
    if not np.all(np.isfinite(values)):
        raise MessageError(f"odometry contains non-finite values {values.tolist()}")
    return values


def array_to_odometry(x: float, y: float, yaw: float, v: float, omega: float, stamp: float,
                      frame_id: str = "odom", child_frame_id: str = "base_link") -> Odometry:
    pose = Pose(Point(float(x), float(y), 0.0), yaw_to_quaternion(float(yaw)))
    twist = Twist(Vector3(float(v), 0.0, 0.0), Vector3(0.0, 0.0, float(omega)))
    return Odometry(header(stamp, frame_id), child_frame_id, PoseWithCovariance(pose),
                    TwistWithCovariance(twist))


def twist_from(linear: np.ndarray, angular: np.ndarray) -> Twist:
    lx, ly, lz = (float(v) for v in linear)
    ax, ay, az = (float(v) for v in angular)
    return Twist(Vector3(lx, ly, lz), Vector3(ax, ay, az))


def twist_to_arrays(twist: Twist) -> tuple[np.ndarray, np.ndarray]:
    """Twist -> (linear xyz, angular xyz); MessageError on NaN/inf."""
    linear = np.array([twist.linear.x, twist.linear.y, twist.linear.z])
    angular = np.array([twist.angular.x, twist.angular.y, twist.angular.z])
    if not (np.all(np.isfinite(linear)) and np.all(np.isfinite(angular))):
        raise MessageError("twist contains non-finite values")
    return linear, angular


def twist_stamped(linear: np.ndarray, angular: np.ndarray, stamp: float,
                  frame_id: str) -> TwistStamped:
    return TwistStamped(header(stamp, frame_id), twist_from(linear, angular))


def pose_to_arrays(msg: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    """PoseStamped -> (position xyz, quaternion wxyz), as the sim's arm state lists them."""
    p, q = msg.pose.position, msg.pose.orientation
    pos, quat = np.array([p.x, p.y, p.z]), np.array([q.w, q.x, q.y, q.z])
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat))):
        raise MessageError("pose contains non-finite values")
    return pos, quat


def pose_stamped(pos: np.ndarray, quat_wxyz: np.ndarray, stamp: float,
                 frame_id: str) -> PoseStamped:
    w, x, y, z = (float(v) for v in quat_wxyz)
    px, py, pz = (float(v) for v in pos)
    return PoseStamped(header(stamp, frame_id), Pose(Point(px, py, pz), Quaternion(x, y, z, w)))


def joint_values(msg: JointState, names: tuple[str, ...], which: str) -> np.ndarray:
    """Values of ``which`` (position | velocity) for ``names``, in that order.

    Drivers publish joints in any order and may split them across messages, so look them up by
    name; a missing joint or value is an error, not a silent zero.
    """
    values = getattr(msg, which)
    if len(values) != len(msg.name):
        raise MessageError(f"joint_states has {len(msg.name)} names but {len(values)} {which}s")
    index = {name: i for i, name in enumerate(msg.name)}
    missing = [n for n in names if n not in index]
    if missing:
        raise MessageError(f"joint_states lacks joints {missing}; it has {list(msg.name)}")
    out = np.array([values[index[n]] for n in names], dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise MessageError(f"joint_states {which} contains non-finite values")
    return out
