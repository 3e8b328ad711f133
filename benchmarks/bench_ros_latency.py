"""ROS 2 path latency and control-loop jitter over DDS on loopback (no ROS install needed).

Two processes, as on a real deployment: a "robot" process publishing camera frames and
odometry and receiving commands, and RosRobotEnv (the policy side) in this process. Both use the
pure-DDS transport, a private ROS_DOMAIN_ID and a Cyclone config bound to ``lo``.

  latency   obs -> action -> command: the robot publishes a frame (and odometry) and times
            until the command computed from it arrives back (ping-pong, one frame in flight).
            Includes serialisation, DDS both ways, image decode + crop/resize to 96x96, the
            observation, the safety layer and the command; the policy is a constant (its
            time is excluded). Targets: p99 <= 3 ms at 96x96.
  jitter    RosRobotEnv stepping at 20 Hz (fixed wall-clock rate) with a 30 Hz camera: how far
            each period is from 50 ms, seen by the loop and by the robot receiving commands.
            Target: p99 <= 5 ms.
  serialise one 640x480 rgb8 image through the raw-bytes path vs sequence<uint8>.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from vla_gym.jsonfile import write_json

DOMAIN = 180 + os.getpid() % 40
CAMERA, ODOM, CMD = "/bench/image_raw", "/bench/odom", "/bench/cmd_vel"


def _transport(domain: int):
    from vla_gym.sim2real.transports.dds import DdsTransport, loopback_config

    return DdsTransport(domain, loopback_config())


def _realtime(enable: bool) -> str:
    """SCHED_FIFO for this process and the threads it creates (Cyclone's included), as a robot
    computer would run its control loop; the loop sleeps between steps, so it takes no more CPU
    than without. Returns the policy in effect."""
    if enable and hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
            return "SCHED_FIFO 20"
        except OSError as exc:
            print(f"realtime scheduling refused ({exc}); measuring without it", file=sys.stderr)
    return "SCHED_OTHER"


def _percentiles(values_s: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s) * 1e3
    return {"n": int(ms.size), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


# -- robot process ----------------------------------------------------------------------------
def robot_main(args: argparse.Namespace) -> None:
    """Publishes frames/odometry, receives commands; prints its measurements as JSON."""
    from vla_gym.sim2real.convert import array_to_odometry, header, rgb_to_image
    from vla_gym.sim2real.messages import Image, Odometry, Twist
    from vla_gym.sim2real.transports import QOS_SENSOR_DATA

    _realtime(args.realtime)
    t = _transport(args.domain)
    cam = t.publisher(CAMERA, Image, QOS_SENSOR_DATA)
    odom = t.publisher(ODOM, Odometry)
    cmds = t.subscribe(CMD, Twist)
    height, width = args.height, args.width
    frame = rgb_to_image(np.random.default_rng(0).integers(0, 256, (height, width, 3),
                                                           dtype=np.uint8), 0.0, "camera")

    def publish() -> float:
        start = time.monotonic()
        stamp = time.time()
        odom.publish(array_to_odometry(0.0, 0.0, 0.0, 0.0, 0.0, stamp))
        frame.header = header(stamp, "camera")
        cam.publish(frame)
        return start

    out: dict = {}
    if args.mode == "pingpong":
        latencies, lost = [], 0
        for k in range(args.samples + args.warmup):
            seen = cmds.count
            start = publish()
            got = cmds.wait_newer(seen, 1.0)
            if got is None:
                lost += 1
            elif k >= args.warmup:
                latencies.append(got.received - start)
            time.sleep(args.gap)
        out = {"latency": _percentiles(latencies), "lost": lost}
    else:
        arrivals: list[float] = []
        cmds.callback = lambda msg: arrivals.append(time.monotonic())
        end = time.monotonic() + args.seconds
        next_tick = time.monotonic()
        while time.monotonic() < end:
            publish()
            next_tick += 1.0 / 30.0
            time.sleep(max(next_tick - time.monotonic(), 0.0))
        out = {"arrivals": arrivals}
    t.close()
    print(json.dumps(out))


def _spawn_robot(mode: str, args: argparse.Namespace, **extra: object) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--role", "robot", "--mode", mode, "--domain", str(DOMAIN)]
    if args.realtime:
        cmd.append("--realtime")
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


# -- policy side ------------------------------------------------------------------------------
def _robot_env(sync: str):
    from vla_gym.sim2real.config import load_robot
    from vla_gym.sim2real.robot_env import RosRobotEnv
    from vla_gym.sim2real.transports.dds import loopback_config

    robot = load_robot("turtlebot_like.yaml", rate_hz=20, instruction="go to the cone",
                       topics={"command": CMD, "odom": ODOM}, camera={"topic": CAMERA},
                       limits={"max_velocity": [0.5, 1.5]}, watchdog_timeout_s=0.5,
                       fault_timeout_s=60.0)
    return RosRobotEnv(robot, transport="dds", sync=sync,
                       transport_options={"domain_id": DOMAIN, "config": loopback_config()})


def _drive(env, stop: threading.Event, periods: list[float] | None = None) -> None:
    env.reset()
    action = np.array([0.3, 0.0])
    last = time.monotonic()
    while not stop.is_set():
        env.step(action)  # the policy: a constant (policy time excluded)
        now = time.monotonic()
        if periods is not None:
            periods.append(now - last)
        last = now


def _run(proc: subprocess.Popen, env, periods: list[float] | None = None) -> dict:
    stop = threading.Event()
    worker = threading.Thread(target=_drive, args=(env, stop, periods), daemon=True)
    worker.start()
    out, _ = proc.communicate(timeout=600)
    stop.set()
    worker.join(timeout=5.0)
    env.close()
    return json.loads(out.strip().splitlines()[-1])


def bench_latency(args: argparse.Namespace, width: int, height: int) -> dict:
    proc = _spawn_robot("pingpong", args, width=width, height=height, samples=args.samples,
                        warmup=30, gap=args.gap)
    return _run(proc, _robot_env("frame"))


def bench_jitter(args: argparse.Namespace) -> dict:
    proc = _spawn_robot("stream", args, width=96, height=96, seconds=args.seconds)
    periods: list[float] = []
    result = _run(proc, _robot_env("rate"), periods)
    loop = np.abs(np.asarray(periods[20:]) - 0.05)
    arrivals = np.diff(np.asarray(result["arrivals"][20:]))
    robot = np.abs(arrivals[arrivals < 0.2] - 0.05)  # command intervals while driving
    return {"loop_jitter": _percentiles(list(loop)), "command_jitter": _percentiles(list(robot)),
            "loop_period_mean_ms": float(np.mean(periods[20:]) * 1e3)}


def bench_serialise() -> dict:
    from cyclonedds.idl import IdlStruct  # noqa: F401  (fail early without cyclonedds)

    from vla_gym.sim2real.convert import rgb_to_image
    from vla_gym.sim2real.messages import to_foreign
    from vla_gym.sim2real.transports.dds import idl_type, to_idl

    msg = rgb_to_image(np.zeros((480, 640, 3), np.uint8))
    to_idl(msg).serialize(use_version_2=False)
    start = time.perf_counter()
    for _ in range(20):
        to_idl(msg).serialize(use_version_2=False)
    raw = (time.perf_counter() - start) / 20
    slow_type = _sequence_image_type()
    sample = to_foreign(msg, lambda cls: slow_type if cls.__name__ == "Image" else idl_type(cls),
                        list, list)
    start = time.perf_counter()
    for _ in range(3):
        sample.serialize(use_version_2=False)
    seq = (time.perf_counter() - start) / 3
    return {"raw_bytes_ms": raw * 1e3, "sequence_uint8_ms": seq * 1e3}


def _sequence_image_type():
    """The same Image type without the raw-bytes machine: what a plain IDL mapping costs."""
    import types as pytypes
    from dataclasses import dataclass

    from cyclonedds.idl import IdlStruct

    from vla_gym.sim2real.messages import Image, ros_fields
    from vla_gym.sim2real.transports.dds import _idl_hint

    body = {"__annotations__": {f.name: _idl_hint(f) for f in ros_fields(Image)},
            "__module__": __name__}
    cls = pytypes.new_class("ImageSeq_", (IdlStruct,),
                            {"typename": "sensor_msgs::msg::dds_::Image_"},
                            lambda ns: ns.update(body))
    return dataclass(cls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=400, help="latency samples per size")
    parser.add_argument("--gap", type=float, default=0.01, help="s between ping-pong frames")
    parser.add_argument("--seconds", type=float, default=12.0, help="jitter run length")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--realtime", action="store_true",
                        help="run both processes under SCHED_FIFO (needs CAP_SYS_NICE)")
    parser.add_argument("--role", default="main", choices=["main", "robot"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="pingpong", help=argparse.SUPPRESS)
    parser.add_argument("--domain", type=int, default=DOMAIN, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=96, help=argparse.SUPPRESS)
    parser.add_argument("--height", type=int, default=96, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=30, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "robot":
        robot_main(args)
        return
    os.environ.setdefault("MUJOCO_GL", "egl")
    figures: dict = {"scheduling": _realtime(args.realtime),
                     "load_average_before": os.getloadavg()[0]}
    figures["serialise_640x480"] = bench_serialise()
    for width, height in ((96, 96), (640, 480)):
        figures[f"latency_{width}x{height}"] = bench_latency(args, width, height)
    figures["jitter_20hz"] = bench_jitter(args)
    figures["cpu_count"] = os.cpu_count()
    for name, values in figures.items():
        print(f"{name}: {json.dumps(values)}")
    if args.json:
        write_json(args.json, figures)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
