"""Policy inference latency and throughput, float vs int8, per preset, on a fixed thread count.

For each preset: batch-1 ``predict`` latency (p50 / p99, steady state: the episode's
instruction is cached, as in a rollout) and batch-64 throughput, for the float policy and its
int8 dynamically quantised copy, plus the largest and mean action difference between them on
real env observations. Float and int8 are timed in alternating rounds and the speed-up is the
median of the per-round ratios, so load from other processes hits both sides alike.

    python benchmarks/bench_policy_latency.py --json runs/bench/policy_latency.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.jsonfile import write_json
from vla_gym.policies import VLAPolicy, get_config, quantize_int8
from vla_gym.policies.presets import PRESETS

DEFAULT_PRESETS = ("small", "seed", "base", "rt1", "clip-b32")


def observations(preset: str, count: int, seed: int = 0) -> dict[str, Any]:
    """``count`` real observations rendered at the preset's own image size."""
    config = get_config(preset)
    env_id = "vla_gym/NavGoTo-v0" if config.action == "base_velocity" else \
        "vla_gym/TabletopMultiTask-v0"
    env = gym.make(env_id, image_size=config.vision.image_size)
    rows: dict[str, list] = {"image": [], "instruction": [], "state": []}
    for i in range(count):
        obs, _ = env.reset(seed=seed + i)
        for key in rows:
            rows[key].append(obs[key])
    env.close()
    return {"image": np.stack(rows["image"]), "instruction": rows["instruction"],
            "state": np.stack(rows["state"])}


def first(obs: dict[str, Any], n: int) -> dict[str, Any]:
    return {k: v[:n] for k, v in obs.items()}


def time_calls(policy: VLAPolicy, obs: dict[str, Any], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        policy.predict(obs)
        out.append(time.perf_counter() - start)
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(float_policy: VLAPolicy, int8_policy: VLAPolicy, obs: dict[str, Any],
            rounds: int, calls: int, batch_calls: int) -> dict[str, Any]:
    one, batch = first(obs, 1), obs
    policies = {"float": float_policy, "int8": int8_policy}
    for policy in policies.values():  # warm up: caches, allocator, one-time init
        time_calls(policy, one, 3)
        time_calls(policy, batch, 1)
    lat: dict[str, list[float]] = {k: [] for k in policies}
    thr: dict[str, list[float]] = {k: [] for k in policies}
    lat_ratio, thr_ratio = [], []
    for _ in range(rounds):
        med = {}
        for name, policy in policies.items():
            times = time_calls(policy, one, calls)
            lat[name] += times
            med[name] = statistics.median(times)
            per_batch = time_calls(policy, batch, batch_calls)
            thr[name] += [len(batch["instruction"]) / t for t in per_batch]
        lat_ratio.append(med["float"] / med["int8"])
        thr_ratio.append(statistics.median(thr["int8"][-batch_calls:]) /
                         statistics.median(thr["float"][-batch_calls:]))
    result: dict[str, Any] = {}
    for name in policies:
        result[name] = {"batch1_p50_ms": 1e3 * percentile(lat[name], 50),
                        "batch1_p99_ms": 1e3 * percentile(lat[name], 99),
                        "batch1_hz": 1.0 / percentile(lat[name], 50),
                        f"batch{len(batch['instruction'])}_samples_per_s":
                            statistics.median(thr[name])}
    result["int8_speedup_batch1_p50"] = statistics.median(lat_ratio)
    result["int8_speedup_throughput"] = statistics.median(thr_ratio)
    return result


def action_difference(float_policy: VLAPolicy, int8_policy: VLAPolicy,
                      obs: dict[str, Any]) -> dict[str, float]:
    diff = np.abs(float_policy.predict(obs).astype(np.float64) -
                  int8_policy.predict(obs).astype(np.float64))
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}


def cold_instruction_ms(policy: VLAPolicy, obs: dict[str, Any], calls: int = 5) -> float:
    """Batch-1 latency when the instruction is new (the language encoder runs)."""
    times = []
    for i in range(calls):
        fresh = {**first(obs, 1), "instruction": [f"{obs['instruction'][0]} {i} {time.time()}"]}
        times += time_calls(policy, fresh, 1)
    return 1e3 * statistics.median(times)


def bench_preset(name: str, args: argparse.Namespace) -> dict[str, Any]:
    policy = VLAPolicy.from_preset(name).eval()
    obs = observations(name, args.batch)
    qpolicy = quantize_int8(policy)
    heavy = policy.config.vision.kind == "clip"
    rounds = max(2, args.rounds // 2) if heavy else args.rounds
    calls = max(5, args.calls // 4) if heavy else args.calls
    result = measure(policy, qpolicy, obs, rounds, calls, 1 if heavy else args.batch_calls)
    result["int8_action_difference"] = action_difference(policy, qpolicy, obs)
    result["cold_instruction_batch1_ms"] = {"float": cold_instruction_ms(policy, obs),
                                            "int8": cold_instruction_ms(qpolicy, obs)}
    params = sum(p.numel() for p in policy.parameters())
    result["parameters_millions"] = params / 1e6
    result["image_size"] = policy.config.vision.image_size
    if args.compile:
        from vla_gym.policies import compile_policy

        compiled = compile_policy(VLAPolicy.from_preset(name).eval())
        time_calls(compiled, first(obs, 1), 3)
        result["compiled_float_batch1_p50_ms"] = 1e3 * statistics.median(
            time_calls(compiled, first(obs, 1), calls))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS),
                        choices=sorted(PRESETS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6, help="alternating float/int8 rounds")
    parser.add_argument("--calls", type=int, default=40, help="batch-1 calls per round")
    parser.add_argument("--batch-calls", type=int, default=2, help="batch calls per round")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"threads": args.threads, "batch": args.batch,
                              "torch": torch.__version__, "presets": {}}
    for name in args.presets:
        report["presets"][name] = result = bench_preset(name, args)
        f, q = result["float"], result["int8"]
        print(f"{name:14s} float p50 {f['batch1_p50_ms']:8.2f} ms p99 {f['batch1_p99_ms']:8.2f}"
              f" | int8 p50 {q['batch1_p50_ms']:8.2f} ms p99 {q['batch1_p99_ms']:8.2f}"
              f" | x{result['int8_speedup_batch1_p50']:.2f} b1, "
              f"x{result['int8_speedup_throughput']:.2f} b{args.batch}"
              f" | max |da| {result['int8_action_difference']['max_abs']:.4f}", flush=True)
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
