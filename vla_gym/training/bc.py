"""Behaviour cloning: a torch loop that owns its optimiser, fits a VLAPolicy to expert demos.

What it does, in order: checks the demos against the policy it will build (before any
training), fits action/state normalisation into the policy, then runs AdamW with warm-up +
cosine decay on random-shift-augmented batches, with optional grounding/contrastive auxiliary
losses from the policy library. Every ``checkpoint_every`` steps it writes an atomic checkpoint
(``RUN/checkpoints/latest``, resumable), every ``eval_every`` steps it measures success in the
env over seeded episodes, and it logs to TensorBoard (``RUN/tb``) and draws a learning curve
(``RUN/learning_curve.png``). Ctrl-C writes the latest checkpoint before leaving.

With ``dagger_episodes`` (DAgger), training pauses ``dagger_rounds`` times, evenly spread over
it: the policy being trained drives that round's share of the episodes, the scripted expert
labels every state it visits, and the labelled episodes join the demos (and ``RUN/dagger/``,
so ``--resume`` has them). The pauses do not count against ``time_budget_s``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_gym.interrupts import StopRequest
from vla_gym.training.augment import shift_views
from vla_gym.training.checkpoints import latest_checkpoint, load_trainer_state, save_checkpoint
from vla_gym.training.demos import LEARNER_SEEDS, Demos, learner_episodes
from vla_gym.types import (
    state_indices_without_velocities,
)

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class BCConfig:
    preset: str = "small"
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    shift: int = 4  # pixels of random-shift augmentation (0 = off)
    grounding_weight: float = 0.0  # auxiliary losses (0 = off)
    contrastive_weight: float = 0.0
    eval_every: int = 1000  # steps between in-env evaluations (0 = only at the end)
    eval_episodes: int = 20
    eval_num_envs: int = 2
    eval_seed: int = 100_000  # far from collection seeds, so evaluation scenes are unseen
    checkpoint_every: int = 250
    log_every: int = 50
    seed: int = 0
    # Stop early once training has taken this long; the learning rate then decays with time.
    time_budget_s: float | None = None
    # Feed the robot's velocities to the policy. Off by default: in smooth expert demos the
    # velocity all but reveals the previous action, and a cloned policy learns to copy it
    # (the "copycat" shortcut) instead of reading the images; in closed loop it then stalls.
    state_velocities: bool = False
    policy_changes: dict[str, Any] = field(default_factory=dict)  # on top of the preset
    # DAgger: episodes driven by the policy in training and labelled by the expert, added to
    # the demos in ``dagger_rounds`` rounds at 1/(R+1), 2/(R+1), ... of training (0 = off).
    dagger_episodes: int = 0
    dagger_rounds: int = 1
    # "bf16": forward passes under torch.autocast in bfloat16 (weights, optimiser state and
    # gradients stay float32). On CPUs with native bf16 (avx512_bf16, AMX) a step is about
    # 1.5x faster (benchmarks/bench_bc_step.py), so a time budget buys more steps; elsewhere
    # it can be slower.
    precision: str = "fp32"
    # Lift each camera's target map onto the table for the action head, with the cameras'
    # calibration read from the demos' env (``vla_gym.policies.geometry``; tabletop ids, and
    # it needs grounding_weight > 0 to train the maps).
    target_geometry: bool = False
    # After training: re-initialise the head (state MLP, final MLP, action head) and fit it
    # for this many steps on the frozen trunk's perception of the demos, un-augmented
    # (``vla_gym.training.refit``; 0 = off). Counted in train_seconds, not in time_budget_s.
    refit_head_steps: int = 0
    refit_batch_size: int = 256
    # The first this many steps train perception alone: the auxiliary (grounding) losses on
    # full batches of the demos' grounding frames, no action loss, so that BC starts from
    # maps that already find the named object (on Pick they end training on the target more
    # often: README, "Grounding warm-up"). Counted in steps and in time_budget_s.
    grounding_warmup_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_episodes", "eval_num_envs",
                     "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"BCConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.grounding_warmup_steps < 0:
            raise ValueError(f"BCConfig.grounding_warmup_steps must be >= 0, got "
                             f"{self.grounding_warmup_steps}")
        if self.grounding_warmup_steps and self.grounding_weight <= 0:
            raise ValueError("BCConfig.grounding_warmup_steps trains the grounding losses, "
                             "which need grounding_weight > 0")
        if self.refit_head_steps < 0 or self.refit_batch_size < 1:
            raise ValueError(f"BCConfig.refit_head_steps must be >= 0 and refit_batch_size "
                             f">= 1, got {self.refit_head_steps}, {self.refit_batch_size}")
        if self.lr <= 0:
            raise ValueError(f"BCConfig.lr must be > 0, got {self.lr}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"BCConfig.time_budget_s must be > 0, got {self.time_budget_s}")
        if self.dagger_episodes < 0 or self.dagger_rounds < 1:
            raise ValueError(f"BCConfig.dagger_episodes must be >= 0 and dagger_rounds >= 1, "
                             f"got {self.dagger_episodes}, {self.dagger_rounds}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"BCConfig.precision must be one of {PRECISIONS}, got "
                             f"{self.precision!r}")
        if 0 < self.dagger_episodes < self.dagger_rounds:
            raise ValueError(f"BCConfig.dagger_episodes ({self.dagger_episodes}) must be at "
                             f"least one per round ({self.dagger_rounds} rounds)")


@dataclass
class BCResult:
    run_dir: Path
    policy_dir: Path
    steps: int
    final_loss: float
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    dagger_seconds: float = 0.0  # spent on DAgger rollouts, not counted in train_seconds
    refit: dict[str, Any] | None = None  # the head refit's figures (RefitResult), if any


def build_policy(demos: Demos, config: BCConfig) -> Any:
    """A fresh policy from the preset, shaped for the demos' env, normalised on them."""
    from vla_gym.policies import VLAPolicy, get_config
    from vla_gym.policies.presets import default_grounding_classes

    # The policy reads every camera the demos recorded unless policy_changes say otherwise.
    changes: dict[str, Any] = {"action": demos.contract.name, "state_dim": demos.state_dim,
                               "views": ("image", *demos.views), "seed": config.seed}
    if not config.state_velocities:
        changes["state_indices"] = state_indices_without_velocities(demos.contract,
                                                                    demos.state_dim)
    if config.target_geometry:
        changes["geometry"] = {"cameras": demo_calibration(demos)}
    for key, value in config.policy_changes.items():  # a section's changes add to ours
        both = isinstance(value, dict) and isinstance(changes.get(key), dict)
        changes[key] = {**changes[key], **value} if both else value
    aux: dict[str, Any] = {"grounding_weight": config.grounding_weight,
                           "contrastive_weight": config.contrastive_weight}
    if config.grounding_weight > 0:
        aux["grounding_classes"] = default_grounding_classes()
    changes["aux"] = aux
    policy = VLAPolicy(get_config(config.preset, **changes))
    policy.set_normalization(actions=demos.actions, states=demos.states)
    return policy


def demo_calibration(demos: Demos) -> dict[str, Any]:
    """The calibration of every camera the demos recorded, from a fresh env like theirs."""
    import gymnasium as gym

    from vla_gym.policies.geometry import calibration_from_env

    env = gym.make(demos.env_id, **demos.env_kwargs)
    try:
        return calibration_from_env(env, ("image", *demos.views))
    finally:
        env.close()


def check_demos_fit_policy(demos: Demos, policy: Any) -> None:
    """Refuse before training when the demos and the policy disagree on shapes."""
    cfg = policy.config
    if demos.contract.name != cfg.action or demos.actions.shape[1] != policy.action_dim:
        raise ValueError(
            f"the demos' actions are {demos.contract.name} ({demos.actions.shape[1]}-D) but the "
            f"policy outputs {cfg.action} ({policy.action_dim}-D); pick a preset for this env")
    missing = [view for view in cfg.extra_views if view not in demos.views]
    if missing:
        raise ValueError(f"the policy reads {missing} but the demos have no such images; record "
                         f"them from an env made with cameras={cfg.cameras}")
    if cfg.geometry.enabled and demos.target_pos is None:
        raise ValueError("the policy's target geometry learns the target's height from "
                         "target_pos labels, which these demos lack; record them with "
                         "vla-gym collect (it keeps info['target_pos'])")
    if cfg.use_state and demos.state_dim != cfg.state_dim:
        raise ValueError(f"the demos' state is {demos.state_dim}-D but the policy expects "
                         f"{cfg.state_dim}-D")


class BCTrainer:
    def __init__(self, demos: Demos, run_dir: str | Path, config: BCConfig | None = None,
                 resume: bool = False) -> None:
        import torch

        self.demos, self.config = demos, config or BCConfig()
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.config.seed)
        self.rng = np.random.default_rng(self.config.seed)
        self.step = 0
        self.history: dict[str, list] = {"step": [], "loss": [], "eval_step": [], "success": [],
                                         "dagger_step": [], "dagger_success": []}
        self.evaluations: list[dict[str, Any]] = []
        self.dagger_rounds_done, self.dagger_seconds = 0, 0.0
        checkpoint = latest_checkpoint(self.run_dir) if resume else None
        if resume and checkpoint is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.run_dir}/checkpoints")
        self.policy = self._load_policy(checkpoint) if checkpoint else build_policy(
            demos, self.config)
        check_demos_fit_policy(demos, self.policy)
        if self.config.grounding_warmup_steps and demos.grounding_frames is None:
            raise ValueError("BCConfig.grounding_warmup_steps needs demos with grounding frames "
                             "(Demos.from_expert(other_targets=True or grounding_scenes=N))")
        self._started: float | None = None  # when run() began (the time budget's clock)
        self.optimizer, self.scheduler = self._make_optimiser()
        if checkpoint:
            self._restore(load_trainer_state(checkpoint))
            for round_ in range(1, self.dagger_rounds_done + 1):
                self.demos = self.demos.with_episodes(Demos.load(self._dagger_file(round_)))

    # -- set-up ------------------------------------------------------------------------------
    @staticmethod
    def _load_policy(checkpoint: Path) -> Any:
        from vla_gym.policies import VLAPolicy

        return VLAPolicy.from_pretrained(checkpoint)

    def _make_optimiser(self):
        import torch

        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.config.lr,
                                      weight_decay=self.config.weight_decay)
        warmup, total = self.config.warmup_steps, self.config.steps

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = max((step - warmup) / max(total - warmup, 1), self._time_progress())
            return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def _time_progress(self) -> float:
        """Fraction of the time budget spent (0 without one): under a budget the cosine decay
        follows whichever runs out first, steps or time, so a budgeted run still anneals."""
        budget, started = self.config.time_budget_s, self._started
        if budget is None or started is None:
            return 0.0
        return (time.perf_counter() - started) / budget

    def _state(self) -> dict[str, Any]:
        import torch

        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "history": self.history,
                "evaluations": self.evaluations, "config": asdict(self.config),
                "dagger_rounds_done": self.dagger_rounds_done,
                "dagger_seconds": self.dagger_seconds}

    def _restore(self, state: dict[str, Any]) -> None:
        import torch

        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.history, self.evaluations = state["history"], state["evaluations"]
        for key in ("dagger_step", "dagger_success"):  # absent from older checkpoints
            self.history.setdefault(key, [])
        self.dagger_rounds_done = int(state.get("dagger_rounds_done", 0))
        self.dagger_seconds = float(state.get("dagger_seconds", 0.0))

    # -- DAgger ------------------------------------------------------------------------------
    def _dagger_file(self, round_: int) -> Path:
        return self.run_dir / "dagger" / f"round_{round_}.npz"

    def _dagger_due(self) -> bool:
        cfg = self.config
        if not cfg.dagger_episodes or self.dagger_rounds_done >= cfg.dagger_rounds:
            return False
        progress = max(self.step / cfg.steps, self._time_progress())
        return progress >= (self.dagger_rounds_done + 1) / (cfg.dagger_rounds + 1)

    def _round_episodes(self, round_: int) -> tuple[int, int]:
        """(first seed, episodes) of DAgger round ``round_`` (from 1): the episodes split as
        evenly as they go, later rounds taking the remainder."""
        total, rounds = self.config.dagger_episodes, self.config.dagger_rounds
        before = total * (round_ - 1) // rounds
        return LEARNER_SEEDS + before, total * round_ // rounds - before

    def dagger_round(self) -> dict[str, Any]:
        """Roll the policy out, have the expert label what it saw, add that to the demos."""
        began = time.perf_counter()
        round_ = self.dagger_rounds_done + 1
        seed, episodes = self._round_episodes(round_)
        added, successes = learner_episodes(self.demos.env_id, self.policy, episodes, seed,
                                            **self.demos.env_kwargs)
        added.save(self._dagger_file(round_))
        self.demos = self.demos.with_episodes(added)
        self.dagger_rounds_done = round_
        elapsed = time.perf_counter() - began
        self.dagger_seconds += elapsed
        if self._started is not None:
            self._started += elapsed  # the time budget counts training only
        record = {"round": round_, "step": self.step, "episodes": episodes,
                  "transitions": len(added), "learner_success": float(np.mean(successes)),
                  "seconds": elapsed}
        self.history["dagger_step"].append(self.step)
        self.history["dagger_success"].append(record["learner_success"])
        self.checkpoint()  # the demos on disk and the trainer state agree from here
        return record

    # -- training ----------------------------------------------------------------------------
    def sample_batch(self, demos: Demos | None = None, size: int | None = None
                     ) -> dict[str, Any]:
        demos = demos or self.demos
        index = self.rng.integers(0, len(demos), size or self.config.batch_size)
        return shift_views(demos.batch(index), self.policy.config.views, self.config.shift,
                           self.rng)

    def train_step(self) -> dict[str, float]:
        import torch

        self.policy.train()
        with self._autocast():
            if self.step < self.config.grounding_warmup_steps:
                loss, metrics = self._grounding_step()
            else:
                loss, metrics = self._bc_step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return metrics

    def _grounding_step(self) -> tuple[Any, dict[str, float]]:
        """A warm-up step: the auxiliary losses on a full batch of grounding frames."""
        loss, metrics = self._frames_loss(self.config.batch_size)
        return loss, {**metrics, "loss": loss.item()}

    def _bc_step(self) -> tuple[Any, dict[str, float]]:
        """The action loss on a batch of demos, plus the auxiliary losses on half a batch of
        grounding frames where there are any."""
        loss, metrics = self.policy(self.sample_batch())
        if self.demos.grounding_frames is not None and self.config.grounding_weight > 0:
            g_loss, g_metrics = self._frames_loss(max(1, self.config.batch_size // 2))
            loss = loss + g_loss
            metrics.update(g_metrics, loss=loss.item())
        return loss, metrics

    def _frames_loss(self, size: int) -> tuple[Any, dict[str, float]]:
        """The auxiliary losses on ``size`` grounding frames; metrics named ``frames_*``."""
        assert self.demos.grounding_frames is not None
        loss, metrics = self.policy.auxiliary_loss(self.sample_batch(
            self.demos.grounding_frames, size))
        return loss, {f"frames_{k}": v for k, v in metrics.items()}

    def _autocast(self) -> Any:
        import torch

        enabled = self.config.precision == "bf16"
        return torch.autocast(self.policy.device.type, dtype=torch.bfloat16, enabled=enabled)

    def checkpoint(self) -> Path:
        return save_checkpoint(self.run_dir / "checkpoints" / "latest", self.policy, self._state())

    def evaluate(self) -> dict[str, Any]:
        from vla_gym.policies import BatchPolicyAdapter
        from vla_gym.rollout import run_rollouts

        cfg = self.config
        summary = run_rollouts(self.demos.env_id, BatchPolicyAdapter(self.policy),
                               episodes=cfg.eval_episodes, seed=cfg.eval_seed,
                               num_envs=cfg.eval_num_envs, env_kwargs=self.demos.env_kwargs)
        result = {"step": self.step, "success_rate": summary.success_rate,
                  "success_ci95": list(summary.success_ci95), "episodes": summary.episodes,
                  "mean_return": summary.mean_return, "per_task": summary.per_task}
        self.evaluations.append(result)
        self.history["eval_step"].append(self.step)
        self.history["success"].append(summary.success_rate)
        return result

    def run(self, progress: bool = False) -> BCResult:
        cfg = self.config
        writer = _summary_writer(self.run_dir / "tb")
        self._started = time.perf_counter()
        losses: list[float] = []
        try:
            with StopRequest() as stop, _progress(progress, cfg.steps, self.step) as advance:
                while self.step < cfg.steps:
                    if stop.requested:
                        raise KeyboardInterrupt  # between steps: the state is whole
                    if cfg.time_budget_s is not None and (
                            time.perf_counter() - self._started > cfg.time_budget_s):
                        break  # out of training time: evaluate and save what there is
                    if self._dagger_due():
                        self._log_dagger(writer, self.dagger_round())
                    metrics = self.train_step()
                    losses.append(metrics["loss"])
                    advance()
                    self._log(writer, metrics, losses)
                    if self.step % cfg.checkpoint_every == 0:
                        self.checkpoint()
                    if cfg.eval_every and self.step % cfg.eval_every == 0 and (
                            self.step < cfg.steps):
                        self._log_eval(writer, self.evaluate())
        except KeyboardInterrupt:
            self.checkpoint()  # a loadable latest checkpoint, then leave as asked
            raise
        finally:
            if writer is not None:
                writer.flush()
        refit = self._refit_head()
        trained_s = time.perf_counter() - self._started  # periodic evaluations included
        self._log_eval(writer, self.evaluate())
        self.checkpoint()
        policy_dir = self.policy.save_pretrained(self.run_dir / "policy")
        draw_learning_curve(self.history, self.run_dir / "learning_curve.png")
        result = BCResult(self.run_dir, Path(policy_dir), self.step,
                          float(np.mean(losses[-cfg.log_every:])) if losses else float("nan"),
                          self.evaluations, trained_s, self.dagger_seconds, refit)
        self._write_summary(result)
        if writer is not None:
            writer.close()
        return result

    def _refit_head(self) -> dict[str, Any] | None:
        if not self.config.refit_head_steps:
            return None
        from vla_gym.training.refit import refit_head

        return asdict(refit_head(self.policy, self.demos, self.config.refit_head_steps,
                                 self.config.refit_batch_size, self.config.lr,
                                 self.config.weight_decay, self.config.seed))

    def _log(self, writer: Any, metrics: dict[str, float], losses: list[float]) -> None:
        if self.step % self.config.log_every:
            return
        self.history["step"].append(self.step)
        self.history["loss"].append(float(np.mean(losses[-self.config.log_every:])))
        if writer is not None:
            for key, value in metrics.items():
                writer.add_scalar(f"train/{key}", value, self.step)
            writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)

    def _log_dagger(self, writer: Any, record: dict[str, Any]) -> None:
        if writer is not None:
            writer.add_scalar("dagger/learner_success", record["learner_success"],
                              record["step"])
            writer.add_scalar("dagger/transitions", len(self.demos), record["step"])

    def _log_eval(self, writer: Any, result: dict[str, Any]) -> None:
        if writer is not None:
            writer.add_scalar("eval/success_rate", result["success_rate"], result["step"])
            writer.add_scalar("eval/mean_return", result["mean_return"], result["step"])

    def _write_summary(self, result: BCResult) -> None:
        summary = {"env_id": self.demos.env_id, "episodes": self.demos.num_episodes,
                   "transitions": len(self.demos), "config": asdict(self.config),
                   "grounding_frames": len(frames) if (frames := self.demos.grounding_frames)
                   is not None else 0,
                   "steps": result.steps, "final_loss": result.final_loss,
                   "train_seconds": result.train_seconds, "evaluations": result.evaluations,
                   "refit": result.refit,
                   "dagger": {"rounds": self.dagger_rounds_done,
                              "seconds": result.dagger_seconds,
                              "step": self.history["dagger_step"],
                              "learner_success": self.history["dagger_success"]}}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))


def train_bc(demos: Demos, run_dir: str | Path, config: BCConfig | None = None,
             resume: bool = False, progress: bool = False) -> BCResult:
    return BCTrainer(demos, run_dir, config, resume).run(progress)


def _summary_writer(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is in the [train] extra; training works without it
        return None
    return SummaryWriter(str(path))


class _progress:
    """A rich progress bar when asked for, else a no-op; yields an ``advance()`` callable."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self._bar = Progress()
        self._bar.start()
        task = self._bar.add_task("bc", total=self.total, completed=self.done)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._bar.stop()


def draw_learning_curve(history: dict[str, list], path: Path) -> Path:
    """Training loss (log scale) and in-env success against steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_success) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(history["step"], history["loss"])
    ax_loss.set(xlabel="step", ylabel="training loss", title="loss")
    if history["loss"] and min(history["loss"]) > 0:
        ax_loss.set_yscale("log")
    ax_success.plot(history["eval_step"], history["success"], marker="o")
    ax_success.set(xlabel="step", ylabel="success rate", ylim=(-0.02, 1.02), title="eval")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
