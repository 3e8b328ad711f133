"""Behaviour-cloning quality bars: demos -> BC under a training-time budget -> seeded evaluation.

For each env id: record ``--demos`` expert episodes (seeds 0..N-1; by default three in four
executed with DART action noise, and tabletop ids with the wrist camera too), train the preset
with the grounding loss for at most ``--time-budget`` seconds of training, then evaluate on unseen
seeds (from 100 000) with ``vla_gym.evaluation.evaluate``: success with a 95% Wilson interval,
per task family, the counterfactual-instruction test, and for multitask ids the held-out
paraphrase split (``--split test``) as a ratio to the in-distribution rate.

    python benchmarks/bench_bc.py --env vla_gym/TabletopPick-v0 --env vla_gym/NavGoTo-v0 \\
        --demos 200 --time-budget 900 --json runs/bench/bc.json

Pick's best recipe so far (78.5% on average over 150 unseen scenes and training seeds 0, 1
and 2, against 76.4% without ``--grounding-warmup-steps``; 78.2% over seeds 0-5; README,
"Demonstrations, behaviour cloning, evaluation")::

    python benchmarks/bench_bc.py --env vla_gym/TabletopPick-v0 --demos 200 --other-targets \
        --grounding-scenes 800 --target-xy-to-head --grip-blips 0.08 --time-budget 860 \
        --refit-head-steps 5000 --target-geometry --geometry-only-head --binary-gripper \
        --precision bf16 --grounding-warmup-steps 2000 --eval-episodes 60

``--language minilm`` swaps the preset's text encoder for the pretrained MiniLM (frozen),
``--language lstm`` for an LSTM (word order). ``--landmark-map`` adds FiLM's landmark map for
spatial relations (800 grounding scenes, 150 scenes: 77.3% and 76.7% over training seeds 0
and 1; 77.3% with the LSTM too; the LSTM alone 76.0%).
``--dagger-episodes M`` adds M episodes driven by the policy in training and labelled by the
expert (DAgger, ``BCConfig.dagger_episodes``); the expert-labelled episodes are then
``--demos`` + M, which the report gives as ``expert_labelled_episodes``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from seeds import EVAL_SEED  # this folder is on sys.path

import vla_gym  # noqa: F401  (registers the env ids)
from vla_gym.evaluation import evaluate
from vla_gym.jsonfile import write_json
from vla_gym.policies import VLAPolicy
from vla_gym.policies.configuration import MINILM
from vla_gym.training.bc import BCConfig, train_bc
from vla_gym.training.demos import Demos
from vla_gym.training.refit import refit_head


def preset_for(env_id: str, preset: str) -> str:
    """The mobile base has its own small preset (2-D velocity, odometry state)."""
    return "nav-small" if preset == "small" and "/Nav" in env_id else preset


def env_kwargs_for(env_id: str, args: argparse.Namespace) -> dict[str, Any]:
    """Demo env settings: image size, the wrist camera on tabletop ids unless --no-wrist, and
    the overhead camera on navigation ids with --top."""
    kwargs: dict[str, Any] = {"image_size": args.image_size}
    if args.wrist and "/Tabletop" in env_id:
        kwargs["cameras"] = ("main", "wrist")
    if args.top and "/Nav" in env_id:
        kwargs["cameras"] = ("main", "top")
    return kwargs


def has_a_gripper(env_id: str) -> bool:
    """Only the arm (tabletop ids) has a gripper to knock, blip or binarise."""
    return "/Tabletop" in env_id


def record_demos(env_id: str, args: argparse.Namespace, env_kwargs: dict[str, Any]
                 ) -> tuple[Demos, Demos | None, dict[str, Any]]:
    """(all demos, the ones the head is refitted on alone or None, the demo settings)."""
    has_gripper = has_a_gripper(env_id)
    settings: dict[str, Any] = {"grasp_misses": args.grasp_misses if has_gripper else 0.0,
                                "grip_blips": args.grip_blips if has_gripper else 0.0,
                                "expert_options": {}}
    if args.expert_lift_speed:
        settings["expert_options"]["lift_speed"] = args.expert_lift_speed
    if not args.expert_square_cubes and has_gripper:
        settings["expert_options"]["square_cubes"] = False
    keeping = args.head_demos_keep_heading if has_gripper else 0
    demos = Demos.from_expert(env_id, args.demos - keeping, seed=0, noise=args.noise,
                              other_targets=args.other_targets,
                              grounding_scenes=args.grounding_scenes,
                              relational_grounding=args.relational_grounding, **settings,
                              **env_kwargs)
    if not keeping:
        return demos, None, settings
    # the last demo seeds, from the expert that keeps its heading over cubes
    head_demos = Demos.from_expert(
        env_id, keeping, seed=args.demos - keeping, noise=args.noise,
        other_targets=args.other_targets, grasp_misses=settings["grasp_misses"],
        grip_blips=settings["grip_blips"],
        expert_options={**settings["expert_options"], "square_cubes": False}, **env_kwargs)
    return demos.with_episodes(head_demos), head_demos, settings


def run_one(env_id: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    env_kwargs = env_kwargs_for(env_id, args)
    demos, head_demos, settings = record_demos(env_id, args, env_kwargs)
    collect_s = time.perf_counter() - started
    changes: dict[str, Any] = {}
    if args.language == "minilm":
        changes["language"] = {"kind": "hf", "pretrained": MINILM}
        # frozen, so its instruction embeddings are cached (fine-tuned, it ran every step:
        # 1 236 steps in an 860 s budget against 7 078 with the preset's encoder)
        changes["finetune"] = {"language": "frozen"}
    elif args.language == "lstm":
        changes["language"] = {"kind": "lstm"}
    if args.target_xy_to_head:
        changes.setdefault("fusion", {})["target_xy_to_head"] = True
    if args.landmark_map:
        changes.setdefault("fusion", {})["landmark_map"] = True
    if args.relation_layers:
        changes.setdefault("fusion", {})["relation_layers"] = args.relation_layers
    if args.geometry_only_head:
        changes["geometry"] = {"image_features_to_head": False}
    if args.head_dropout:
        changes.setdefault("head", {})["dropout"] = args.head_dropout
    if args.binary_gripper and has_a_gripper(env_id):
        changes.setdefault("head", {})["binary_gripper"] = True
    config = BCConfig(preset=preset_for(env_id, args.preset), steps=args.max_steps,
                      batch_size=args.batch_size, grounding_weight=args.grounding,
                      eval_every=0, eval_episodes=10, time_budget_s=args.time_budget,
                      policy_changes=changes, seed=args.seed, shift=args.shift,
                      dagger_episodes=args.dagger_episodes, dagger_rounds=args.dagger_rounds,
                      precision=args.precision, target_geometry=args.target_geometry,
                      # with head demos the one refit is on those alone, after training
                      refit_head_steps=0 if head_demos is not None else args.refit_head_steps,
                      grounding_warmup_steps=args.grounding_warmup_steps)
    result = train_bc(demos, out / env_id.split("/")[-1], config)
    head_refit = None
    if head_demos is not None:
        policy = VLAPolicy.from_pretrained(result.policy_dir)
        head_refit = refit_head(policy, head_demos, args.refit_head_steps, seed=args.seed)
        policy.save_pretrained(result.policy_dir)
    figures: dict[str, Any] = {
        "env_id": env_id, "demos": demos.num_episodes, "transitions": len(demos),
        "collect_seconds": round(collect_s, 1), "train_seconds": round(result.train_seconds, 1),
        "dagger_episodes": args.dagger_episodes, "dagger_rounds": args.dagger_rounds,
        "dagger_seconds": round(result.dagger_seconds, 1),
        "expert_labelled_episodes": demos.num_episodes + args.dagger_episodes,
        "train_steps": result.steps, "preset": config.preset, "language": args.language,
        "torch_threads": torch.get_num_threads(), "env_kwargs": env_kwargs,
        "dart_noise": args.noise, "shift": args.shift, "policy_changes": changes,
        "grounding_scenes": args.grounding_scenes,
        "relational_grounding": args.relational_grounding, **settings,
        "precision": args.precision,
        "target_geometry": args.target_geometry, "refit": result.refit,
        "grounding_warmup_steps": args.grounding_warmup_steps,
        "head_demos_keep_heading": 0 if head_demos is None else head_demos.num_episodes,
        "head_refit_on_those": None if head_refit is None else asdict(head_refit),
        "other_target_frames": len(
            demos.grounding_frames) if demos.grounding_frames is not None else 0,
    }
    size = {"image_size": args.image_size}  # the policy's own views open their cameras
    train = evaluate(result.policy_dir, env_id, episodes=args.eval_episodes, seed=EVAL_SEED,
                     counterfactual_episodes=args.eval_episodes, env_kwargs=size)
    figures["train_split"] = train
    if "MultiTask" in env_id:
        test = evaluate(result.policy_dir, env_id, episodes=args.eval_episodes, seed=EVAL_SEED,
                        split="test", counterfactual_episodes=0, env_kwargs=size)
        figures["test_split"] = test
        rate = train["success_rate"]
        figures["test_over_train"] = test["success_rate"] / rate if rate else None
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", help="env id (repeatable)")
    parser.add_argument("--demos", type=int, default=200)
    parser.add_argument("--time-budget", type=float, default=900.0,
                        help="seconds of training per env (periodic evaluation included)")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--language", choices=("preset", "minilm", "lstm"), default="preset",
                        help="the preset's text encoder, the pretrained MiniLM (frozen), or "
                             "an LSTM (word order: which noun a relation is about)")
    parser.add_argument("--grounding", type=float, default=1.0)
    parser.add_argument("--image-size", type=int, default=64, help="demo and eval images")
    parser.add_argument("--wrist", action=argparse.BooleanOptionalAction, default=True,
                        help="tabletop ids: record and read the wrist camera too")
    parser.add_argument("--top", action=argparse.BooleanOptionalAction, default=False,
                        help="navigation ids: record and read the overhead camera too")
    parser.add_argument("--noise", type=float, default=0.3,
                        help="DART action noise on 3 in 4 demos (0 = clean demos)")
    parser.add_argument("--shift", type=int, default=4, help="random-shift augmentation (px)")
    parser.add_argument("--other-targets", action=argparse.BooleanOptionalAction, default=False,
                        help="grounding labels for the other objects of the demos' scenes")
    parser.add_argument("--grounding-scenes", type=int, default=0,
                        help="further scenes seen only by the grounding losses (frames along "
                        "the expert's approach to each object; no actions)")
    parser.add_argument("--relational-grounding", action="store_true",
                        help="tabletop: in the grounding scenes, approach each object that a "
                             "spatial relation can name once more under such an instruction")
    parser.add_argument("--head-dropout", type=float, default=0.0)
    parser.add_argument("--grasp-misses", type=float, default=0.0,
                        help="fraction of demos whose first grasp is knocked off target, so "
                             "they show the expert grasping again (tabletop)")
    parser.add_argument("--grip-blips", type=float, default=0.0,
                        help="tabletop ids: per-step chance, in the noisy demos, that the "
                        "executed gripper closes for a few steps while the expert's is open")
    parser.add_argument("--expert-lift-speed", type=float, default=None,
                        help="tabletop ids: a deliberately slow demonstrator lifting at this "
                             "fraction of the action's limit (the weak start of bench_rlhf)")
    parser.add_argument("--expert-square-cubes", action=argparse.BooleanOptionalAction,
                        default=True, help="tabletop ids: the expert turns the gripper square "
                        "to a cube before grasping it (--no-expert-square-cubes: it closes "
                        "across the cube as it stands, as a heading-blind policy does)")
    parser.add_argument("--head-demos-keep-heading", type=int, default=0,
                        help="tabletop ids: the last N of --demos come from the expert that "
                        "keeps its heading over cubes; after training, the head is refitted "
                        "on those alone (perception learns from all)")
    parser.add_argument("--target-xy-to-head", action=argparse.BooleanOptionalAction,
                        default=False, help="each view's target-map position goes straight "
                        "to the final MLP (fusion.target_xy_to_head)")
    parser.add_argument("--landmark-map", action="store_true",
                        help="FiLM: a landmark map for spatial relations, read by the target "
                             "map (fusion.landmark_map)")
    parser.add_argument("--relation-layers", type=int, default=0,
                        help="self-attention blocks over FiLM's tokens before the target map")
    parser.add_argument("--dagger-episodes", type=int, default=0,
                        help="episodes driven by the policy in training, labelled by the expert "
                        "(DAgger; their rollouts do not count against --time-budget)")
    parser.add_argument("--dagger-rounds", type=int, default=1)
    parser.add_argument("--target-geometry", action="store_true",
                        help="tabletop: lift the target maps onto the table for the head")
    parser.add_argument("--geometry-only-head", action="store_true",
                        help="with --target-geometry: the head reads the lifted geometry and "
                             "the state, not the image features")
    parser.add_argument("--grounding-warmup-steps", type=int, default=0,
                        help="first train perception alone this many steps, on the grounding "
                             "frames (BCConfig.grounding_warmup_steps; within --time-budget)")
    parser.add_argument("--refit-head-steps", type=int, default=0,
                        help="after training, refit the head this many steps on the frozen "
                             "perception (counted in train_seconds, not --time-budget)")
    parser.add_argument("--binary-gripper", action="store_true",
                        help="tabletop ids: the policy commands the gripper fully open or "
                             "closed, by the sign of its prediction (head.binary_gripper)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="training forward passes in float32 or bfloat16 autocast")
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/bc"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not 0 <= args.head_demos_keep_heading < args.demos:
        parser.error(f"--head-demos-keep-heading must be in [0, --demos), got "
                     f"{args.head_demos_keep_heading}")
    if args.head_demos_keep_heading and args.refit_head_steps < 1:
        parser.error("--head-demos-keep-heading refits the head on those demos: it needs "
                     "--refit-head-steps")
    torch.set_num_threads(args.threads)
    envs = args.env or ["vla_gym/TabletopPick-v0", "vla_gym/NavGoTo-v0"]
    report = {"runs": [run_one(env_id, args, args.out) for env_id in envs]}
    for run in report["runs"]:
        train = run["train_split"]
        lo, hi = train["success_ci95"]
        line = (f"{run['env_id']}: {run['demos']} demos + {run['dagger_episodes']} DAgger "
                f"episodes, {run['train_steps']} steps in "
                f"{run['train_seconds']:.0f} s -> success {train['success_rate']:.1%} "
                f"({lo:.1%}-{hi:.1%}), counterfactual "
                f"{train['counterfactual']['success_rate']:.1%}")
        if "test_split" in run:
            line += f", test/train {run['test_over_train']}"
        print(line)
    if args.json is not None:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
