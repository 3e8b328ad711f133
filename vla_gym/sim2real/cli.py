"""``vla-gym bridge`` and ``vla-gym deploy``, as plain typer command functions.

Register them on the main app with ``app.command()(bridge)`` and ``app.command()(deploy)``;
``python -m vla_gym.sim2real.cli`` runs them standalone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from vla_gym.jsonfile import write_json

TransportOpt = Annotated[str, typer.Option(
    "--transport", help="auto (rclpy if it imports, else dds) | rclpy | dds")]
DomainOpt = Annotated[int | None, typer.Option("--domain-id", help="Default: ROS_DOMAIN_ID.")]
LoopbackOpt = Annotated[bool, typer.Option("--loopback", help="dds: this host only (lo).")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the figures here.")]
RealtimeOpt = Annotated[bool, typer.Option(
    "--realtime", help="SCHED_FIFO scheduling (needs CAP_SYS_NICE): steadier periods on a "
    "busy computer.")]


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM -> SystemExit while a command runs, so `finally` sends the zero command."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _setup(transport: str, domain_id: int | None, loopback: bool,
           realtime: bool = False) -> dict[str, Any]:
    """Logging, scheduling and transport options (before any transport thread exists, so
    Cyclone's threads inherit the scheduling policy)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
        except (OSError, AttributeError) as exc:
            logging.getLogger("vla_gym.sim2real").warning("--realtime refused: %s", exc)
    if transport == "memory":
        raise typer.BadParameter("the memory transport only reaches this process; use dds")
    options: dict[str, Any] = {"domain_id": domain_id}
    if loopback:
        from vla_gym.sim2real.transports.dds import loopback_config

        options["config"] = loopback_config()
    return options


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        typer.echo(f"wrote {write_json(path, payload)}")


def bridge(
    env: Annotated[str, typer.Option("--env", help="Env id, e.g. vla_gym/NavGoTo-v0.")],
    robot: Annotated[Path | None, typer.Option(
        "--robot", help="Robot file (default: the shipped one for the env's contract).")] = None,
    transport: TransportOpt = "auto",
    domain_id: DomainOpt = None,
    loopback: LoopbackOpt = False,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    expert: Annotated[bool, typer.Option(
        "--expert", help="Publish the scripted expert's action on /sim/expert_action.")] = False,
    auto_reset: Annotated[bool, typer.Option(
        "--auto-reset", help="Start a new episode when one ends.")] = False,
    image_size: Annotated[int | None, typer.Option("--image-size")] = None,
    duration: Annotated[float | None, typer.Option(
        "--duration", help="Stop after this many seconds.")] = None,
    realtime: RealtimeOpt = False,
    json_path: JsonOpt = None,
):
    """Serve a MuJoCo env as a ROS 2 robot (camera, odometry/joint states; obeys commands)."""
    import vla_gym
    from vla_gym.sim2real.bridge import SimBridge
    from vla_gym.sim2real.config import load_robot
    from vla_gym.sim2real.transports import make_transport

    if env not in vla_gym.ENV_TABLE:
        raise typer.BadParameter(f"unknown env {env!r}; valid: {list(vla_gym.ENV_TABLE)}")
    options = _setup(transport, domain_id, loopback, realtime)
    config = load_robot(robot) if robot is not None else None
    kwargs = {"image_size": image_size} if image_size else {}
    with _sigterm_exits(), make_transport(transport, **options) as tr:
        server = SimBridge(env, tr, config, env_kwargs=kwargs, seed=seed, expert=expert,
                           auto_reset=auto_reset)
        start = time.monotonic()
        try:
            server.open()
            r = server.robot
            typer.echo(f"serving {env} as {r.name!r} over {tr.name}: camera {r.camera.topic}, "
                       f"commands {r.topics.command}, sim topics {r.sim_topic('*')}")
            server.run(duration)
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
        elapsed = time.monotonic() - start
    _write_json(json_path, {"env": env, "transport": tr.name, "seconds": elapsed,
                            "steps": server.steps, "sim_dt": server.dt})


def deploy(
    policy: Annotated[str, typer.Option(
        "--policy", help="Checkpoint dir, module:factory (called with the env) or topic:/name "
        "(Float64MultiArray actions).")],
    robot: Annotated[Path, typer.Option("--robot", help="Robot file (YAML).")],
    transport: TransportOpt = "auto",
    domain_id: DomainOpt = None,
    loopback: LoopbackOpt = False,
    episodes: Annotated[int, typer.Option("--episodes", min=1)] = 1,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1)] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    instruction: Annotated[str | None, typer.Option("--instruction")] = None,
    record: Annotated[Path | None, typer.Option(
        "--record", help="Directory for the recording.")] = None,
    record_format: Annotated[str, typer.Option(
        "--record-format", help="mcap, npz or mcap,npz.")] = "mcap,npz",
    publish_features: Annotated[bool, typer.Option("--publish-features")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Compute everything, publish nothing.")] = False,
    sim_bridge: Annotated[bool, typer.Option(
        "--sim-bridge", help="The robot is `vla-gym bridge`: use its /sim topics.")] = False,
    realtime: RealtimeOpt = False,
    json_path: JsonOpt = None,
):
    """Run a policy on a robot at a fixed rate (latest frame; safety layer; optional record)."""
    from vla_gym.sim2real.config import load_robot
    from vla_gym.sim2real.deploy import run_deploy

    options = _setup(transport, domain_id, loopback, realtime)
    config = load_robot(robot, **({"topics": {"sim": "/sim"}} if sim_bridge else {}))
    formats = tuple(f.strip() for f in record_format.split(",") if f.strip())
    with _sigterm_exits():
        summary = run_deploy(policy, config, transport=transport, episodes=episodes,
                             max_steps=max_steps, seed=seed, instruction=instruction,
                             record=record, record_formats=formats,
                             publish_features=publish_features, dry_run=dry_run,
                             transport_options=options)
    typer.echo(
        f"{config.name}: {summary.episodes} episode(s), {summary.steps} steps, "
        f"{summary.successes} reported successes; policy p50 {summary.policy_ms_p50:.1f} ms, "
        f"period p50 {summary.period_ms_p50:.1f} ms, jitter p99 {summary.jitter_ms_p99:.1f} ms"
        + (f"; faults: {summary.faults}" if summary.faults else ""))
    _write_json(json_path, summary.to_dict())


app = typer.Typer(add_completion=False, no_args_is_help=True, help="vla_gym sim2real commands.")
app.command()(bridge)
app.command()(deploy)

if __name__ == "__main__":
    app()
