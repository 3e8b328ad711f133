"""Env throughput with 96x96 image observations, measured side by side in one run.

Ratios, not absolute numbers, are the figures to compare across machines:
  env / raw      vla_gym env step vs the bare loop on the same compiled model
                 (mj_step x frame_skip + one render at the same size and quality)
  env / pusher   vla_gym env step vs Gymnasium's Pusher-v5 with render_mode="rgb_array"
  asyncK / one   make_vec async mode, K envs (a HybridVectorEnv: K/2 envs in the parent,
                 K/2 in one worker process on a 2-core machine) vs a single env, total
                 steps/s; K from --async-envs (2, 4 and 8 by default)
  async2_workers_only / one
                 plain AsyncVectorEnv, both envs in workers (vector_kwargs local_envs=0)
  2 procs / one  two independent single-env processes, their timing started together: what
                 the machine allows

The headline env/raw and asyncK/one ratios come from ``measure_interleaved``: the contenders
take turns in short blocks within one process, each block paired with its neighbours.
Every other measurement runs in its own process pinned to one core (where the OS allows) so the
single-env numbers are one-core numbers; rounds alternate between contenders to spread noise,
and ratios are also given per round (paired), which is steadier on a noisy machine.
The env steps with zero actions so that its physics (an arm holding still among objects, the
episode resetting at the time limit) matches the raw loop's: the ratio isolates env overhead.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
# The setting vla_gym applies on import (see vla_gym.gl_backend); set here so every contender,
# Pusher-v5 included, renders with it.
os.environ.setdefault("LP_NUM_THREADS", "0")

IMAGE = 96


def _pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _time_loop(step, steps: int) -> float:
    for _ in range(20):  # warm-up
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def _env_stepper(env_id: str):
    """(step function, env): the env stepped with zero actions, reset at episode ends."""
    import gymnasium as gym
    import numpy as np

    import vla_gym  # noqa: F401

    env = gym.make(env_id, image_size=IMAGE)
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape, np.float32)

    def step():
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()

    return step, env


def _raw_stepper(env_id: str):
    """(step function, env): the env's compiled model stepped and rendered with no env around
    it, through MuJoCo's own ``mujoco.Renderer`` API (``update_scene`` + ``render``) on the
    env's reference renderer (``CameraRenderer.mujoco_renderer``: the same buffer size and
    settings, in a GL context of its own). The env draws the same bytes through the C calls
    behind that API (``vla_gym.envs.rendering``), which is part of what is measured."""
    import gymnasium as gym
    import mujoco

    import vla_gym  # noqa: F401

    env = gym.make(env_id, image_size=IMAGE)
    env.reset(seed=0)
    base = env.unwrapped
    model, data, frame_skip = base.model, base.data, base.frame_skip
    renderer = base.renderers.obs_renderer().mujoco_renderer
    camera = base.observation_camera

    def step():
        mujoco.mj_step(model, data, nstep=frame_skip)
        renderer.update_scene(data, camera=camera)
        renderer.render()

    return step, env


def _measure_pinned(stepper, env_id: str, steps: int) -> float:
    """Steps/s of ``stepper(env_id)``'s step function on one pinned core."""
    _pin_one_core()
    step, env = stepper(env_id)
    rate = _time_loop(step, steps)
    env.close()
    return rate


def measure_env(env_id: str, steps: int) -> float:
    return _measure_pinned(_env_stepper, env_id, steps)


def measure_env_together(env_id: str, steps: int, barrier) -> float:
    """``measure_env`` unpinned, its timing started at ``barrier`` (every process at once):
    the processes' timed windows overlap, so their summed rates are what the machine gives
    when every core steps an env."""
    step, env = _env_stepper(env_id)
    for _ in range(20):
        step()
    barrier.wait()
    rate = _time_loop(step, steps)
    env.close()
    return rate


def measure_raw(env_id: str, steps: int) -> float:
    """The same compiled model stepped and rendered with no env around it."""
    return _measure_pinned(_raw_stepper, env_id, steps)


def measure_pusher(steps: int) -> float:
    import gymnasium as gym

    _pin_one_core()
    env = gym.make("Pusher-v5", render_mode="rgb_array", width=IMAGE, height=IMAGE)
    env.reset(seed=0)

    def step():
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        env.render()
        if terminated or truncated:
            env.reset()

    rate = _time_loop(step, steps)
    env.close()
    return rate


def measure_vector(env_id: str, mode: str, num_envs: int, steps: int,
                   vector_kwargs: dict | None = None) -> float:
    import numpy as np

    import vla_gym

    if mode == "sync":  # one process: compare on one core, like the single env
        _pin_one_core()
    envs = vla_gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode,
                            vector_kwargs=vector_kwargs, image_size=IMAGE)
    envs.reset(seed=0)
    actions = np.zeros(envs.action_space.shape, np.float32)
    rate = _time_loop(lambda: envs.step(actions), steps) * num_envs
    envs.close()
    return rate


def measure_interleaved(env_id: str, blocks: int, block_steps: int,
                        async_envs: tuple[int, ...] = (2,)) -> dict[str, list[float]]:
    """One env, the raw loop and an async vector env of each size in ``async_envs`` (total
    env steps/s as ``asyncK``) in one process, taking turns in blocks of ``block_steps``
    steps (fewer for vectors of more than 2 envs, to keep blocks as long): each block's rate
    is paired with its neighbours' taken a fraction of a second apart, so the machine's drift
    (often +-25% over seconds here) cancels out of the ratios. The env and raw blocks run
    pinned to one core; the vector envs (their workers spawned while unpinned) use every
    core."""
    import numpy as np

    import vla_gym

    all_cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    env_step, env = _env_stepper(env_id)
    raw_step, raw_env = _raw_stepper(env_id)
    contenders = {"env": (env_step, 1, True), "raw": (raw_step, 1, True)}
    vectors = []
    for count in async_envs:
        vec = vla_gym.make_vec(env_id, num_envs=count, vectorization_mode="async",
                               image_size=IMAGE)
        vec.reset(seed=0)
        actions = np.zeros(vec.action_space.shape, np.float32)
        contenders[f"async{count}"] = (functools.partial(vec.step, actions), count, False)
        vectors.append(vec)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(blocks):
        for name, (step, envs, pinned) in contenders.items():
            if pinned:
                _pin_one_core()
            elif all_cores is not None:
                os.sched_setaffinity(0, all_cores)
            # block_steps steps of one env or a 2-env vector; as long a block for larger ones
            vector_steps = max(1, block_steps * min(envs, 2) // envs)
            rates[name].append(_time_loop(step, vector_steps) * envs)
    for vec in vectors:
        vec.close()
    env.close()
    raw_env.close()
    return rates


def _child(queue, fn, args) -> None:
    queue.put(fn(*args))


def _in_processes(count: int, fn, *args, barrier: bool = False) -> list[float]:
    """Run ``fn`` in ``count`` fresh spawned processes at once (non-daemon: may have workers);
    with ``barrier``, ``fn`` gets a barrier for all of them as its last argument."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    if barrier:
        args = (*args, ctx.Barrier(count))
    processes = [ctx.Process(target=_child, args=(queue, fn, args)) for _ in range(count)]
    for process in processes:
        process.start()
    results = [queue.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    return results


def _in_process(fn, *args) -> float:
    return _in_processes(1, fn, *args)[0]


def measure_all(env_id: str, args: argparse.Namespace) -> dict:
    """Every contender for one env id, rounds alternating; medians, and ratios per round.
    Pusher-v5 is measured in every round too, next to the env, so that its paired ratio
    compares two samples taken a few seconds apart."""
    keys = ("env", "raw", "pusher", "sync2", "async2", "async2_workers_only", "two_processes")
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(args.rounds):
        samples["raw"].append(_in_process(measure_raw, env_id, args.steps))
        samples["env"].append(_in_process(measure_env, env_id, args.steps))
        samples["pusher"].append(_in_process(measure_pusher, args.pusher_steps))
        samples["sync2"].append(_in_process(measure_vector, env_id, "sync", 2, args.steps // 2))
        samples["async2"].append(_in_process(measure_vector, env_id, "async", 2, args.steps // 2))
        samples["async2_workers_only"].append(_in_process(
            measure_vector, env_id, "async", 2, args.steps // 2, {"local_envs": 0}))
        samples["two_processes"].append(sum(
            _in_processes(2, measure_env_together, env_id, args.steps, barrier=True)))
    blocks = _in_process(measure_interleaved, env_id, args.blocks, args.block_steps,
                         tuple(args.async_envs))
    med = {k: statistics.median(v) for k, v in samples.items()}

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(samples[a], samples[b]))

    def paired_blocks(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(blocks[a], blocks[b]))

    return {
        # the steadiest figures: neighbouring blocks in one process (measure_interleaved)
        "interleaved_blocks": {
            "paired_ratio_env_over_raw": paired_blocks("env", "raw"),
            **{f"paired_ratio_async{k}_over_one_env": paired_blocks(f"async{k}", "env")
               for k in args.async_envs},
            "steps_per_second_median": {k: statistics.median(v) for k, v in blocks.items()},
            "samples": blocks,
        },
        "steps_per_second_median": med,
        "samples": samples,
        "ratio_env_over_raw": med["env"] / med["raw"],
        "ratio_env_over_pusher_v5": med["env"] / med["pusher"],
        "ratio_async2_over_one_env": med["async2"] / med["env"],
        "ratio_async2_workers_only_over_one_env": med["async2_workers_only"] / med["env"],
        "ratio_sync2_over_one_env": med["sync2"] / med["env"],
        "ratio_two_processes_over_one_env": med["two_processes"] / med["env"],
        "paired_ratio_env_over_raw": paired("env", "raw"),
        "paired_ratio_env_over_pusher_v5": paired("env", "pusher"),
        "paired_ratio_async2_over_one_env": paired("async2", "env"),
        "paired_ratio_async2_workers_only_over_one_env": paired("async2_workers_only", "env"),
        "paired_ratio_two_processes_over_one_env": paired("two_processes", "env"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", nargs="+", default=["vla_gym/TabletopPick-v0",
                                                      "vla_gym/NavGoTo-v0"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--pusher-steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=15,
                        help="interleaved blocks of each contender in one process")
    parser.add_argument("--block-steps", type=int, default=200)
    parser.add_argument("--async-envs", type=int, nargs="+", default=[2, 4, 8],
                        help="async vector env sizes in the interleaved blocks")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    result = {"image_size": IMAGE, "cpu_count": os.cpu_count(),
              "envs": {env_id: measure_all(env_id, args) for env_id in args.env}}
    print(json.dumps(result, indent=2))
    if args.json:
        from vla_gym.jsonfile import write_json  # after the GL settings above

        write_json(args.json, result)


if __name__ == "__main__":
    main()
