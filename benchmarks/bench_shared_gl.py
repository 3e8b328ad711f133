"""Envs stepped in turn in one process: one GL context per thread (the default) against one
per renderer (``VLA_GYM_SHARED_GL=0``), measured side by side in one run.

Three contenders take turns in short blocks on one pinned core: a single env, K envs
sharing the thread's context and K envs with a context each (made with the variable set,
which renderers read when they are made). Each block's time per env step is paired with
its neighbours', so the machine's drift cancels out of the ratios:

  in turn / one env     what stepping K envs in turn costs per step over one env alone
  own / shared          per-step time with a context per renderer over the shared context

Usage: python benchmarks/bench_shared_gl.py [--env ID ...] [--envs K] [--blocks N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

IMAGE = 96


def _make_envs(env_id: str, count: int, shared: bool) -> list:
    import gymnasium as gym

    import vla_gym  # noqa: F401

    os.environ["VLA_GYM_SHARED_GL"] = "1" if shared else "0"
    try:
        envs = [gym.make(env_id, image_size=IMAGE) for _ in range(count)]
        for seed, env in enumerate(envs):
            env.reset(seed=seed)  # the renderers are made here
    finally:
        os.environ.pop("VLA_GYM_SHARED_GL", None)
    return envs


def _block(envs: list, action, steps: int) -> float:
    """Microseconds per env step over ``steps`` rounds of stepping every env once."""
    start = time.perf_counter()
    for _ in range(steps):
        for env in envs:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
    return (time.perf_counter() - start) / (steps * len(envs)) * 1e6


def measure(env_id: str, count: int, blocks: int, block_steps: int) -> dict:
    import numpy as np

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    contenders = {
        "one_env": _make_envs(env_id, 1, shared=True),
        "shared": _make_envs(env_id, count, shared=True),
        "own": _make_envs(env_id, count, shared=False),
    }
    action = np.zeros(contenders["one_env"][0].action_space.shape, np.float32)
    for envs in contenders.values():  # warm-up
        _block(envs, action, 5)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(blocks):
        for name, envs in contenders.items():
            steps = block_steps if name == "one_env" else max(1, block_steps // count)
            samples[name].append(_block(envs, action, steps))
    for envs in contenders.values():
        for env in envs:
            env.close()

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))

    return {
        "envs_in_turn": count,
        "us_per_step_median": {k: statistics.median(v) for k, v in samples.items()},
        "paired_ratio_shared_in_turn_over_one_env": paired("shared", "one_env"),
        "paired_ratio_own_in_turn_over_one_env": paired("own", "one_env"),
        "paired_ratio_own_over_shared": paired("own", "shared"),
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", nargs="+", default=["vla_gym/TabletopPick-v0",
                                                     "vla_gym/NavGoTo-v0"])
    parser.add_argument("--envs", type=int, default=4, help="envs stepped in turn")
    parser.add_argument("--blocks", type=int, default=25)
    parser.add_argument("--block-steps", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.envs < 2:
        parser.error(f"--envs must be at least 2 (envs stepped in turn), got {args.envs}")
    results = {env_id: measure(env_id, args.envs, args.blocks, args.block_steps)
               for env_id in args.env}
    for env_id, r in results.items():
        us = r["us_per_step_median"]
        print(f"{env_id}: us per env step, one env {us['one_env']:.0f}, {args.envs} in turn "
              f"shared {us['shared']:.0f}, own contexts {us['own']:.0f}; paired ratios: "
              f"shared/one {r['paired_ratio_shared_in_turn_over_one_env']:.3f}, "
              f"own/one {r['paired_ratio_own_in_turn_over_one_env']:.3f}, "
              f"own/shared {r['paired_ratio_own_over_shared']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"image_size": IMAGE, "envs": results}, indent=2))


if __name__ == "__main__":
    main()
