"""Transports: one interface (latest value with its stamp, publish, close) over three backends."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import requires_dds

from vla_gym.sim2real import convert
from vla_gym.sim2real.messages import Bool, Float64MultiArray, Image, String, Twist
from vla_gym.sim2real.transports import (
    QOS_LATCHED,
    QOS_SENSOR_DATA,
    make_transport,
    resolve_kind,
)
from vla_gym.sim2real.transports.base import Subscription, check_topic
from vla_gym.sim2real.transports.rclpy import rclpy_available

needs_rclpy = pytest.mark.skipif(not rclpy_available(),
                                 reason="rclpy is not installed (source a ROS 2 setup to run)")


def test_kinds_and_auto() -> None:
    with pytest.raises(ValueError, match="transport must be one of"):
        resolve_kind("zenoh")
    assert resolve_kind("auto") == ("rclpy" if rclpy_available() else "dds")
    assert resolve_kind("memory") == "memory"


def test_topic_names_and_types() -> None:
    assert check_topic("cmd_vel", Twist) == "/cmd_vel"
    with pytest.raises(ValueError):
        check_topic("bad topic", Twist)
    with pytest.raises(TypeError, match="not a topic type"):
        check_topic("/x", int)


def test_memory_latest_value_and_stamp(memory_pair) -> None:
    a, b = memory_pair
    sub = b.subscribe("/chatter", String)
    assert sub.latest() is None
    pub = a.publisher("chatter", String)
    before = time.monotonic()
    for text in ("one", "two", "three"):
        pub.publish(String(text))
    latest = sub.latest()
    assert latest.msg.data == "three" and latest.count == 3 and latest.received >= before
    assert latest.age() >= 0.0


def test_memory_latched_reaches_late_subscriber(memory_pair) -> None:
    a, b = memory_pair
    a.publisher("/instruction", String, QOS_LATCHED).publish(String("go to the cone"))
    assert b.subscribe("/instruction", String, QOS_LATCHED).latest().msg.data == "go to the cone"
    assert b.subscribe("/instruction", String).latest() is None  # volatile: history not kept


def test_wrong_type_is_dropped_with_a_log_line(memory_pair, caplog) -> None:
    a, b = memory_pair
    sub = b.subscribe("/estop", Bool)
    a.publisher("/estop", String).publish(String("true"))  # a second type on the topic: refused
    assert sub.latest() is None
    sub.deliver(String("true"))  # whatever slips through is still checked by the subscription
    assert sub.latest() is None and sub.rejected == 1
    assert "expected std_msgs/msg/Bool" in caplog.text


def test_wait_newer_blocks_without_spinning() -> None:
    sub = Subscription("/x", String)
    assert sub.wait_newer(0, 0.01) is None
    threading.Timer(0.05, lambda: sub.deliver(String("late"))).start()
    got = sub.wait_newer(0, 2.0)
    assert got is not None and got.msg.data == "late"


def test_callback_errors_do_not_break_delivery(memory_pair) -> None:
    a, b = memory_pair

    def boom(msg: String) -> None:
        raise RuntimeError("user callback bug")

    sub = b.subscribe("/cb", String, callback=boom)
    a.publisher("/cb", String).publish(String("x"))
    assert sub.latest().msg.data == "x"


def test_closed_transport_publishes_nothing(memory_pair) -> None:
    a, b = memory_pair
    sub = b.subscribe("/t", String)
    pub = a.publisher("/t", String)
    a.close()
    pub.publish(String("after close"))
    assert sub.latest() is None


@requires_dds
def test_dds_round_trip_on_loopback(dds_options) -> None:
    with make_transport("dds", **dds_options) as robot, \
            make_transport("dds", **dds_options) as client:
        cmd = robot.subscribe("/cmd_vel", Twist)
        cam = client.subscribe("/camera/image_raw", Image, QOS_SENSOR_DATA)
        pub_cmd = client.publisher("/cmd_vel", Twist)
        pub_cam = robot.publisher("/camera/image_raw", Image, QOS_SENSOR_DATA)
        rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        deadline = time.monotonic() + 10.0
        while (cmd.latest() is None or cam.latest() is None) and time.monotonic() < deadline:
            msg = Twist()
            msg.linear.x = 0.25
            pub_cmd.publish(msg)
            pub_cam.publish(convert.rgb_to_image(rgb, time.time(), "cam", "bgr8"))
            time.sleep(0.05)
        assert cmd.latest().msg.linear.x == 0.25
        assert np.array_equal(convert.image_to_rgb(cam.latest().msg), rgb)


@requires_dds
def test_dds_latched_and_qos_mismatch(dds_options) -> None:
    """A reliable reader does not match a best-effort writer (as in ROS 2); latched works."""
    with make_transport("dds", **dds_options) as a, make_transport("dds", **dds_options) as b:
        a.publisher("/latched", String, QOS_LATCHED).publish(String("kept"))
        best_effort = a.publisher("/be", Float64MultiArray, QOS_SENSOR_DATA)
        late = b.subscribe("/latched", String, QOS_LATCHED)
        reliable_reader = b.subscribe("/be", Float64MultiArray)
        deadline = time.monotonic() + 10.0
        while late.latest() is None and time.monotonic() < deadline:
            best_effort.publish(Float64MultiArray(data=[1.0]))
            time.sleep(0.05)
        assert late.latest().msg.data == "kept"
        assert reliable_reader.latest() is None


@needs_rclpy
def test_rclpy_round_trip() -> None:  # pragma: no cover - needs a ROS 2 install
    with make_transport("rclpy") as a, make_transport("rclpy") as b:
        sub = b.subscribe("/vla_gym_test", String)
        pub = a.publisher("/vla_gym_test", String)
        deadline = time.monotonic() + 10.0
        while sub.latest() is None and time.monotonic() < deadline:
            pub.publish(String("hello"))
            time.sleep(0.05)
        assert sub.latest().msg.data == "hello"


@needs_rclpy
def test_rclpy_image_conversion() -> None:  # pragma: no cover - needs a ROS 2 install
    from vla_gym.sim2real.messages import from_foreign
    from vla_gym.sim2real.transports.rclpy import to_ros

    msg = convert.rgb_to_image(np.zeros((4, 5, 3), np.uint8), 1.5, "cam")
    assert from_foreign(to_ros(msg), Image) == msg
