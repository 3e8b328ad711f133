"""The main job (``make demo``): collect expert demos -> train BC -> evaluate -> report.

On ``TabletopMultiTask-v0`` with the ``small`` preset by default, sized to finish in well under
20 minutes on 2 CPU cores. Everything lands in one directory: the dataset, the training run,
evaluation JSONs, clips, an expert rollout video, and ``report.md`` tying them together.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vla_gym.training.bc import BCConfig


@dataclass(frozen=True)
class DemoConfig:
    env_id: str = "vla_gym/TabletopMultiTask-v0"
    episodes: int = 150
    num_envs: int = 2
    bc: BCConfig = BCConfig(preset="small", steps=5000, eval_every=0, eval_episodes=20,
                            grounding_weight=1.0)
    eval_episodes: int = 60
    seed: int = 0


def run_demo(out: str | Path, config: DemoConfig | None = None, progress: bool = False,
             log: Any = print) -> dict[str, Any]:
    from vla_gym.data import collect_demos
    from vla_gym.evaluation import evaluate
    from vla_gym.rollout import run_rollouts
    from vla_gym.training.bc import train_bc
    from vla_gym.training.demos import Demos

    cfg = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        log(f"[demo] {name} ...")
        result = fn(*args, **kwargs)
        timings[name] = time.perf_counter() - start
        return result

    expert = timed("expert rollouts", run_rollouts, cfg.env_id, "expert", episodes=10,
                   seed=cfg.seed, video_path=out / "expert.mp4", progress=progress)
    expert.to_json(out / "expert.json")
    collected = timed("collect", collect_demos, cfg.env_id, cfg.episodes, out / "demos",
                      num_envs=cfg.num_envs, seed=cfg.seed, progress=progress)
    demos = Demos.from_dataset(out / "demos")
    result = timed("train bc", train_bc, demos, out / "bc", cfg.bc, resume=False,
                   progress=progress)
    reports = {}
    for split in ("train", "test"):
        reports[split] = timed(f"eval {split}", evaluate, result.policy_dir, cfg.env_id,
                               episodes=cfg.eval_episodes, split=split, num_envs=cfg.num_envs,
                               video_dir=out / "clips" / split,
                               counterfactual_episodes=cfg.eval_episodes if split == "train"
                               else 0, progress=progress)
        (out / f"eval_{split}.json").write_text(json.dumps(reports[split], indent=2))
    summary = {"env_id": cfg.env_id, "timings_seconds": timings,
               "expert_success": expert.success_rate,
               "demos": {"episodes": cfg.episodes, "transitions": len(demos),
                         "bytes_per_frame": getattr(collected, "bytes_per_frame", None)},
               "bc": {"steps": result.steps, "final_loss": result.final_loss},
               "eval": reports}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "report.md").write_text(render_report(summary, cfg))
    log(f"[demo] wrote {out / 'report.md'}")
    return summary


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _success_line(report: dict[str, Any]) -> str:
    lo, hi = report["success_ci95"]
    return f"{_pct(report['success_rate'])} (95% CI {_pct(lo)}-{_pct(hi)})"


def render_report(summary: dict[str, Any], cfg: DemoConfig) -> str:
    train, test = summary["eval"]["train"], summary["eval"]["test"]
    lines = [
        f"# vla_gym demo: {cfg.env_id}",
        "",
        f"Expert: {_pct(summary['expert_success'])} success over 10 episodes "
        "(video: `expert.mp4`).",
        f"Demos: {summary['demos']['episodes']} expert episodes, "
        f"{summary['demos']['transitions']} transitions (`demos/`, Minari).",
        f"BC: preset `{cfg.bc.preset}`, {summary['bc']['steps']} steps, final loss "
        f"{summary['bc']['final_loss']:.4f}; learning curve below, TensorBoard in `bc/tb`.",
        "",
        "![learning curve](bc/learning_curve.png)",
        "",
        "| split | episodes | success | mean length | mean jerk |",
        "|---|---|---|---|---|",
    ]
    for name, rep in (("train instructions", train), ("held-out paraphrases", test)):
        lines.append(f"| {name} | {rep['episodes']} | {_success_line(rep)} | "
                     f"{rep['mean_length']:.1f} | {rep['mean_jerk']:.3f} |")
    lines += ["", "Per task family (train instructions):", ""]
    for task, stats in train["per_task"].items():
        lines.append(f"- {task}: {_pct(stats['success_rate'])} over {stats['episodes']}")
    if "counterfactual" in train:
        follows = _success_line(train["counterfactual"])
        lines += ["", "Counterfactual instructions (same scene, another object named): the "
                  f"outcome follows the new instruction in {follows}."]
    clips = train.get("videos", {})
    lines += ["", "Clips: " + ", ".join(f"`{Path(p).relative_to(Path(p).parents[2])}`"
                                       for kind in ("success", "failure")
                                       for p in clips.get(kind, [])) or "none", "",
              "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in
                                          summary["timings_seconds"].items()), ""]
    return "\n".join(lines)
