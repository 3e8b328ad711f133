"""Messages: our bytes equal rosbags' CDR for every topic type, both directions; numpy
conversions for images (raw and compressed), odometry, poses and joint states."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim2real_helpers import message_strategy

from vla_gym.sim2real import convert
from vla_gym.sim2real.messages import (
    TOPIC_TYPES,
    CompressedImage,
    Image,
    JointState,
    MessageError,
    Time,
    dds_typename,
    from_foreign,
)
from vla_gym.sim2real.rosbag import deserialize_cdr, serialize_cdr

dds = pytest.importorskip("vla_gym.sim2real.transports.dds")
pytest.importorskip("cyclonedds", reason="cyclonedds not installed (pip install 'vla_gym[ros2]')")
pytest.importorskip("rosbags", reason="rosbags not installed (pip install 'vla_gym[ros2]')")

BYTES_SETTINGS = settings(max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])


def dds_bytes(msg: object) -> bytes:
    """Exactly what the dds backend hands to Cyclone for the wire (XCDR1, with header)."""
    return dds.to_idl(msg).serialize(use_version_2=False)


@pytest.mark.parametrize("cls", TOPIC_TYPES, ids=lambda c: c.ROS_TYPE)
def test_bytes_equal_rosbags_both_directions(cls: type) -> None:
    @BYTES_SETTINGS
    @given(message_strategy(cls))
    def check(msg: object) -> None:
        ours = dds_bytes(msg)
        theirs = serialize_cdr(msg)
        assert ours == theirs
        assert ours[:4] == b"\x00\x01\x00\x00"  # CDR_LE encapsulation, XCDR1
        # rosbags bytes -> our DDS type -> our dataclass, and our bytes -> rosbags
        assert from_foreign(dds.idl_type(cls).deserialize(theirs), cls) == msg
        assert deserialize_cdr(ours, cls) == msg

    check()


def test_full_size_image_bytes_and_fast_path() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    msg = convert.rgb_to_image(rgb, 12.25, "camera")
    ours = dds_bytes(msg)
    assert ours == serialize_cdr(msg)
    import time

    start = time.perf_counter()
    for _ in range(5):
        dds_bytes(msg)
    assert (time.perf_counter() - start) / 5 < 0.02  # raw-bytes path (element-wise: ~50 ms)
    back = from_foreign(dds.idl_type(Image).deserialize(ours), Image)
    assert np.array_equal(convert.image_to_rgb(back), rgb)


def test_ros2_names() -> None:
    assert dds_typename(Image) == "sensor_msgs::msg::dds_::Image_"
    assert dds.idl_type(Image).__idl_typename__ == "sensor_msgs::msg::dds_::Image_"
    assert {cls.ROS_TYPE for cls in TOPIC_TYPES} >= {
        "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/JointState",
        "nav_msgs/msg/Odometry", "geometry_msgs/msg/Twist", "geometry_msgs/msg/TwistStamped",
        "std_msgs/msg/String", "std_msgs/msg/Float64MultiArray"}


# -- images -------------------------------------------------------------------------------------
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 5), st.sampled_from(
    ["rgb8", "bgr8"]))
@settings(max_examples=30, deadline=None)
def test_colour_encodings_round_trip_with_row_padding(h: int, w: int, pad: int,
                                                      enc: str) -> None:
    rgb = np.random.default_rng(h * 100 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    msg = convert.rgb_to_image(rgb, encoding=enc)
    assert msg.step == w * 3 and len(msg.data) == h * w * 3
    if pad:  # drivers may pad rows: step > width * channels
        rows = np.frombuffer(msg.data, np.uint8).reshape(h, w * 3)
        msg.data = np.hstack([rows, np.zeros((h, pad), np.uint8)]).tobytes()
        msg.step += pad
    assert np.array_equal(convert.image_to_rgb(msg), rgb)


def test_bgr8_is_byte_reversed_rgb8_and_mono8_is_grey() -> None:
    rgb = np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    assert convert.rgb_to_image(rgb, encoding="bgr8").data == bytes([0, 0, 255, 255, 0, 0])
    mono = convert.rgb_to_image(rgb, encoding="mono8")
    assert mono.step == 2 and len(mono.data) == 2
    decoded = convert.image_to_rgb(mono)
    assert decoded.shape == (1, 2, 3) and (decoded[..., 0] == decoded[..., 2]).all()
    grey = Image(height=1, width=3, encoding="mono8", step=3, data=bytes([0, 128, 255]))
    assert convert.image_to_rgb(grey)[0, :, 1].tolist() == [0, 128, 255]


def test_mono16_and_big_endian() -> None:
    values = np.array([[0, 256, 65535]], dtype=">u2")
    msg = Image(height=1, width=3, encoding="mono16", is_bigendian=1, step=6,
                data=values.tobytes())
    assert convert.image_to_rgb(msg)[0, :, 0].tolist() == [0, 1, 255]


@pytest.mark.parametrize("msg, words", [
    (Image(height=2, width=2, encoding="32FC1", step=8, data=bytes(16)), "not supported"),
    (Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(11)), "need 12"),
    (Image(height=2, width=2, encoding="rgb8", step=5, data=bytes(12)), "shorter"),
    (Image(height=0, width=2, encoding="rgb8", step=6, data=b""), "empty"),
    (CompressedImage(format="jpeg", data=b"not a jpeg"), "cannot decode"),
    (CompressedImage(format="jpeg", data=b""), "no data"),
])
def test_bad_images_raise_clear_errors(msg: object, words: str) -> None:
    decode = (convert.compressed_to_rgb if isinstance(msg, CompressedImage)
              else convert.image_to_rgb)
    with pytest.raises(MessageError, match=words):
        decode(msg)


def test_compressed_round_trip() -> None:
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[:, :16] = (200, 30, 30)
    png = convert.rgb_to_compressed(rgb, fmt="png")
    assert png.format.startswith("rgb8; png")
    assert np.array_equal(convert.compressed_to_rgb(png), rgb)
    jpeg = convert.compressed_to_rgb(convert.rgb_to_compressed(rgb, fmt="jpeg", quality=95))
    assert np.abs(jpeg.astype(int) - rgb).mean() < 6


@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (96, 96), (50, 70)])
def test_fit_image_centre_crops_and_resizes(shape: tuple[int, int]) -> None:
    rgb = np.zeros((*shape, 3), np.uint8)
    h, w = shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    rgb[top:top + side, left:left + side] = 255  # only the central square is white
    out = convert.fit_image(rgb, 96)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    assert out.min() == 255


# -- poses, odometry, joints ---------------------------------------------------------------
@given(st.floats(-50, 50), st.floats(-50, 50), st.floats(-math.pi + 1e-6, math.pi - 1e-6),
       st.floats(-2, 2), st.floats(-3, 3))
def test_odometry_round_trip(x: float, y: float, yaw: float, v: float, w: float) -> None:
    msg = convert.array_to_odometry(x, y, yaw, v, w, stamp=3.5)
    assert np.allclose(convert.odometry_to_array(msg), [x, y, yaw, v, w], atol=1e-9)
    assert msg.header.frame_id == "odom" and msg.child_frame_id == "base_link"


def test_non_finite_odometry_is_rejected() -> None:
    msg = convert.array_to_odometry(0, 0, 0, 0, 0, 0.0)
    msg.pose.pose.position.x = float("nan")
    with pytest.raises(MessageError, match="non-finite"):
        convert.odometry_to_array(msg)


def test_time_from_seconds() -> None:
    t = Time.from_sec(12.999999999)
    assert 0 <= t.nanosec <= 999_999_999 and abs(t.to_sec() - 12.999999999) < 2e-9


def test_joint_values_by_name() -> None:
    msg = JointState(name=["b", "a"], position=[2.0, 1.0], velocity=[0.2, 0.1])
    assert convert.joint_values(msg, ("a", "b"), "position").tolist() == [1.0, 2.0]
    with pytest.raises(MessageError, match="lacks joints"):
        convert.joint_values(msg, ("c",), "position")
    with pytest.raises(MessageError, match="2 names but 1"):
        convert.joint_values(JointState(name=["a", "b"], position=[1.0]), ("a",), "position")
