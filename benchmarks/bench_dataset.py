"""Demo collection: bytes per stored frame and collection speed, 1 vs 2 envs.

For each env id, collects the same episodes (seeds 0..N-1, 96 px) lossless with one env
(sync) and with two (async, spawned workers), then lossless vs JPEG size. Reports dataset
bytes per stored observation (raw 96x96 RGB is 27,648 B), episodes/s and frames/s, and
checks that the 1-env and 2-env datasets hold the same episodes.

    .venv/bin/python benchmarks/bench_dataset.py --episodes 20 --json runs/bench/dataset.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from vla_gym.jsonfile import write_json

os.environ.setdefault("MUJOCO_GL", "egl")

RAW_FRAME = 96 * 96 * 3


def _same(a, b) -> bool:
    import numpy as np

    for x, y in zip(a.episodes(), b.episodes()):
        if not (np.array_equal(x.actions, y.actions)
                and np.array_equal(x.observations["image"], y.observations["image"])
                and x.observations["instruction"] == y.observations["instruction"]):
            return False
    return len(a) == len(b)


def bench(env_id: str, episodes: int, root: Path) -> dict:
    from vla_gym.data import collect_demos, load_demos

    row: dict = {"env_id": env_id, "episodes": episodes, "raw_bytes_per_frame": RAW_FRAME}
    for name, kwargs in (("one_env", {"num_envs": 1}),
                         ("two_envs_async", {"num_envs": 2, "vectorization_mode": "async"}),
                         ("jpeg_one_env", {"num_envs": 1, "jpeg": True})):
        s = collect_demos(env_id, episodes, root / name, **kwargs)
        row[name] = {"episodes_per_second": round(s.episodes_per_second, 2),
                     "frames_per_second": round(s.frames_per_second, 1),
                     "bytes_per_frame": round(s.bytes_per_frame), "frames": s.frames,
                     "wall_seconds": round(s.wall_seconds, 2), "success_rate": s.success_rate}
        print(env_id, name, row[name], flush=True)
    row["same_episodes_1_vs_2_envs"] = _same(load_demos(root / "one_env"),
                                              load_demos(root / "two_envs_async"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--envs", nargs="+",
                        default=["vla_gym/TabletopPick-v0", "vla_gym/NavGoTo-v0"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import vla_gym  # noqa: F401  (registers the env ids)

    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(env_id, args.episodes, Path(tmp) / str(i))
                for i, env_id in enumerate(args.envs)]
    if args.json is not None:
        write_json(args.json, {"results": rows})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
