"""RL fine-tuning from preferences: rollouts -> queries -> labels -> reward model -> RL, repeated.

The learner never sees the env's reward: :class:`LearnedReward` replaces it with the reward
model's and keeps the true value in ``info["true_reward"]``, which only the logging callback
and the evaluation read. RL (PPO, or SAC as an option, from stable-baselines3) starts from the
BC policy through the SB3 adapter (:mod:`vla_gym.training.sb3_init`) and is kept near it by
:class:`BCAnchor`, a penalty ``weight * mean((a - a_BC(s))^2)`` subtracted from the reward (the
KL to a Gaussian around the BC action, up to scale), so it works for any algorithm.

RL envs run with ``terminate_on_success=False``: every episode lasts the time limit, so the
learned reward's arbitrary offset cannot reward ending or prolonging episodes, and holding a
success keeps paying. Evaluation uses the env as registered (episodes end on success).

A run directory holds::

    RUN/metrics.json            config, BC baseline, one entry per iteration, final figures
    RUN/labels.sqlite           every label given (labeller "oracle")
    RUN/iter_K/queries/         the query set of iteration K (manifest, segments.npz)
    RUN/iter_K/reward_model/    the ensemble trained after iteration K's labels
    RUN/iter_K/policy/          the RL actor after iteration K, as a VLAPolicy
    RUN/iter_K/sb3_model.zip    the SB3 model (actor, critic, optimiser)
    RUN/policy/                 the final policy (``vla-gym eval --policy RUN``)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from vla_gym.jsonfile import write_json
from vla_gym.policies.preprocessing import add_batch_dim, stack_observations
from vla_gym.training.preferences import OracleConfig, Variant
from vla_gym.training.reward_model import RewardEnsemble, RewardModelConfig
from vla_gym.training.sb3_init import (
    BCRegulariser,
    CriticWarmup,
    RLConfig,
    TrueRewardLog,
    build_model,
)

Log = Callable[[str], None]


# -- the reward the learner sees -------------------------------------------------------------
def anchor_penalty(policy: Any, weight: float, obs_batch: dict[str, Any],
                   actions: np.ndarray) -> np.ndarray:
    """``weight * mean((a - a_BC(s))^2)`` per row: how far each action strays from BC's."""
    taken = np.clip(np.asarray(actions, np.float32), -1.0, 1.0)
    if weight == 0:
        return np.zeros(len(taken))
    return weight * np.mean((taken - policy.predict(obs_batch)) ** 2, axis=1)


class LearnedReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """The reward model's reward replaces the env's; the env's goes to ``info`` only.

    ``reward_model`` is read at every step, so updating its weights in place (``load_state_dict``)
    changes the reward of running envs.
    """

    def __init__(self, env: gym.Env, reward_model: RewardEnsemble) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, reward_model=reward_model)
        gym.Wrapper.__init__(self, env)
        self.reward_model = reward_model

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        learned = float(self.reward_model.predict(add_batch_dim(obs))[0])
        info = {**info, "true_reward": float(true_reward), "learned_reward": learned}
        return obs, learned, terminated, truncated, info


class BCAnchor(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Subtracts ``weight * mean((a - a_BC(s))^2)`` from the reward: stay near the BC policy.

    ``info["bc_penalty"]`` says how much; ``info["true_reward"]`` is set to the incoming reward
    unless a :class:`LearnedReward` below already put the env's there.
    """

    def __init__(self, env: gym.Env, policy: Any, weight: float) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, policy=policy, weight=weight)
        gym.Wrapper.__init__(self, env)
        if weight < 0:
            raise ValueError(f"BCAnchor weight must be >= 0, got {weight}")
        self.policy, self.weight = policy, weight
        self._obs: Any = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._obs, info = self.env.reset(**kwargs)
        return self._obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        penalty = float(anchor_penalty(self.policy, self.weight, add_batch_dim(self._obs),
                                       np.asarray(action)[None])[0])
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._obs = obs
        # Under LearnedReward the true reward is already in info; otherwise it is this one.
        info = {"true_reward": float(reward), **info, "bc_penalty": penalty}
        return obs, float(reward) - penalty, terminated, truncated, info


class RawObservations(gym.Wrapper):
    """Remembers each step's raw observations (before and after the action) so a vector-env
    wrapper can score every sub-env in one batch; the instruction is still text here."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self.current, info = self.env.reset(**kwargs)
        return self.current, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self.before = self.current
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.after = self.current = obs
        return obs, float(reward), terminated, truncated, info


def _vec_env_wrapper() -> type:
    from stable_baselines3.common.vec_env import VecEnvWrapper

    return VecEnvWrapper


class BatchedReward(_vec_env_wrapper()):  # type: ignore[misc]
    """:class:`LearnedReward` + :class:`BCAnchor` for a whole SB3 vector env at once: one
    reward-model and one BC forward pass per step for all sub-envs, same rewards and infos."""

    def __init__(self, venv: Any, raws: list[RawObservations],
                 reward_model: RewardEnsemble | None, policy: Any, weight: float) -> None:
        super().__init__(venv)
        self.raws, self.reward_model = raws, reward_model
        self.policy, self.weight = policy, weight
        self._actions = np.zeros(0)

    def reset(self) -> Any:
        return self.venv.reset()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> Any:
        obs, true_rewards, dones, infos = self.venv.step_wait()
        rewards = np.asarray(true_rewards, np.float64)
        learned = None
        if self.reward_model is not None:
            learned = self.reward_model.predict(stack_observations([r.after for r in self.raws]))
            rewards = learned.astype(np.float64)
        before = stack_observations([r.before for r in self.raws])
        penalty = anchor_penalty(self.policy, self.weight, before, self._actions)
        for i, info in enumerate(infos):
            info["true_reward"] = float(true_rewards[i])
            info["bc_penalty"] = float(penalty[i])
            if learned is not None:
                info["learned_reward"] = float(learned[i])
        return obs, (rewards - penalty).astype(np.float32), dones, infos


# -- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RLHFConfig:
    """The whole loop. ``labels`` and ``rl_steps`` are totals spread evenly over iterations."""

    env_id: str
    labels: int = 1000
    iterations: int = 4
    rl_steps: int = 40_000
    segment_length: int = 25
    rollout_seeds: int = 24  # scenes rolled out per iteration to cut segments from
    noise_levels: tuple[float, ...] = (0.0, 0.3, 0.6)
    selection: str = "disagreement"  # later iterations; the first is always random
    oracle: OracleConfig = field(default_factory=OracleConfig)
    # a random 10 of each segment's steps per training batch: 2.5x cheaper fits, every iteration
    reward: RewardModelConfig = field(
        default_factory=lambda: RewardModelConfig(frames_per_segment=10))
    rl: RLConfig = field(default_factory=RLConfig)
    true_reward: bool = False  # learn from the env's reward, no labels (the upper anchor)
    clips: bool = False  # also write an MP4 per queried segment (for people to label or watch)
    eval_episodes: int = 50
    eval_seed: int = 100_000
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.selection not in ("random", "disagreement"):
            raise ValueError(f"RLHFConfig.selection must be 'random' or 'disagreement', got "
                             f"{self.selection!r}")
        if self.iterations < 1 or self.rl_steps < 0 or self.labels < 0:
            raise ValueError("RLHFConfig needs iterations >= 1, rl_steps >= 0, labels >= 0")
        if not self.true_reward and self.labels < 2:
            raise ValueError(f"RLHFConfig.labels must be >= 2 to learn a reward, got "
                             f"{self.labels}")

    def share(self, total: int, iteration: int) -> int:
        """Iteration ``iteration``'s part of ``total`` (the remainder goes to the first ones)."""
        base, extra = divmod(total, self.iterations)
        return base + (1 if iteration < extra else 0)


# -- the RL env -------------------------------------------------------------------------------
def _policy_env_kwargs(config: RLHFConfig, policy: Any) -> dict[str, Any]:
    """The policy's image size and the cameras of every view it reads, unless given."""
    from vla_gym.rollout import policy_env_kwargs

    return {"image_size": policy.config.vision.image_size, **policy_env_kwargs(policy),
            **config.env_kwargs}


def rl_env_kwargs(config: RLHFConfig, policy: Any) -> dict[str, Any]:
    """Env settings for rollouts and RL: what the policy reads (``_policy_env_kwargs``), no
    early end."""
    kwargs = _policy_env_kwargs(config, policy)
    kwargs["terminate_on_success"] = False
    return kwargs


def eval_env_kwargs(config: RLHFConfig, policy: Any) -> dict[str, Any]:
    kwargs = _policy_env_kwargs(config, policy)
    kwargs.pop("terminate_on_success", None)
    return kwargs


def make_rl_env(env_id: str, env_kwargs: dict[str, Any], policy: Any,
                reward_model: RewardEnsemble | None, bc_weight: float, n_envs: int,
                seed: int) -> Any:
    """An SB3 VecEnv of ``n_envs`` envs whose reward is the learned one (the env's when
    ``reward_model`` is None) minus the BC anchor penalty, the instruction as Boxes."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from vla_gym.policies.sb3 import InstructionToBox

    raws: list[RawObservations] = []

    def make() -> gym.Env:
        raw = RawObservations(gym.make(env_id, **env_kwargs))
        raws.append(raw)
        return InstructionToBox(raw, policy.config, "tokens")

    venv = DummyVecEnv([make for _ in range(n_envs)])
    venv.seed(seed)
    if bc_weight < 0:
        raise ValueError(f"the BC anchor weight must be >= 0, got {bc_weight}")
    return BatchedReward(venv, raws, reward_model, policy, bc_weight)


# -- the loop ----------------------------------------------------------------------------------
def _eval_figures(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("episodes", "success_rate", "success_ci95", "mean_return", "mean_length")
    return {k: report[k] for k in keep}


class RLHFRun:
    """One run of the loop from a BC checkpoint; :meth:`run` returns the metrics it wrote.

    ``extra_queries``: (query directory, label database) pairs labelled elsewhere (e.g. by
    people on the web page), added to every reward-model fit; they must match the env.
    """

    def __init__(self, config: RLHFConfig, bc_path: str | Path, out: str | Path,
                 extra_queries: list[tuple[Path, Path]] | None = None,
                 log: Log | None = None) -> None:
        from vla_gym.evaluation import resolve_policy_dir
        from vla_gym.policies import VLAPolicy
        from vla_gym.training.sb3_init import check_bc_policy

        self.config, self.out = config, Path(out)
        self.bc_dir = resolve_policy_dir(bc_path)
        self.bc = VLAPolicy.from_pretrained(self.bc_dir).eval()
        check_bc_policy(self.bc)
        self.current = self.bc
        self.env_kwargs = rl_env_kwargs(config, self.bc)
        self.extra_queries = list(extra_queries or [])
        self._check_extra_queries()
        self.log: Log = log or (lambda message: None)
        self.rng = np.random.default_rng(config.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        self.labels_path = self.out / "labels.sqlite"
        self.query_dirs: list[Path] = []
        self.reward_model: RewardEnsemble | None = None
        self.model: Any = None  # the SB3 model (PPO / SAC)
        self.ranked: Any = None  # or the reward-ranked fine-tuning learner (algo "rft")
        self.reward_log = TrueRewardLog()
        self.bc_regulariser = BCRegulariser(config.rl.bc_loss_weight, config.rl.batch_size,
                                            config.rl.seed)
        self.metrics: dict[str, Any] = {
            "env_id": config.env_id, "bc": str(self.bc_dir), "config": asdict(config),
            "env_kwargs": self.env_kwargs, "iterations": []}

    def _check_extra_queries(self) -> None:
        from vla_gym.training.preferences import check_matches_env, read_query_set

        for directory, _ in self.extra_queries:
            query_set = read_query_set(directory, env_id=self.config.env_id, check_clips=False)
            check_matches_env(query_set, self.config.env_id, self.env_kwargs)

    # -- steps of one iteration ----------------------------------------------------------
    def collect_queries(self, iteration: int) -> Path:
        """Roll out the current policy at each noise level and write a query set."""
        from vla_gym.policies import BatchPolicyAdapter
        from vla_gym.training.preferences import collect_segments, write_query_set

        cfg = self.config
        act = BatchPolicyAdapter(self.current)
        variants = [Variant(f"iter{iteration}-noise{n:g}", act, n) for n in cfg.noise_levels]
        if cfg.rl.algo == "rft" and cfg.rl.rft_explore:
            # the tries RFT will rank must be ones the reward model has seen labelled
            from vla_gym.training.rft import FocusedPolicy

            variants += [Variant(f"iter{iteration}-focus{r}", FocusedPolicy(self.current, r))
                         for r in range(cfg.rl.rft_explore)]
        seeds = 1_000_000 + 10_000 * iteration + np.arange(cfg.rollout_seeds)
        segments, frames = collect_segments(cfg.env_id, variants, seeds,
                                            segment_length=cfg.segment_length,
                                            env_kwargs=self.env_kwargs,
                                            noise_seed=cfg.seed + iteration,
                                            clip_frames=cfg.clips)
        pairs = self._select(segments, cfg.share(cfg.labels, iteration), iteration)
        directory = self.out / f"iter_{iteration}" / "queries"
        write_query_set(directory, segments, pairs, frames=frames, tag=f"i{iteration}",
                        meta={"iteration": iteration, "selection": self._selection(iteration)})
        self.query_dirs.append(directory)
        return directory

    def _selection(self, iteration: int) -> str:
        if self.reward_model is None or len(self.reward_model.members) < 2:
            return "random"
        return self.config.selection

    def _select(self, segments: Any, count: int, iteration: int) -> list[tuple[int, int]]:
        from vla_gym.training.preferences import disagreement_pairs, random_pairs
        from vla_gym.training.reward_model import ResizedSegments

        if self._selection(iteration) == "random":
            return random_pairs(segments, count, self.rng)
        assert self.reward_model is not None
        data = ResizedSegments(segments, self.reward_model.config.image_size)
        returns = self.reward_model.segment_returns(data, np.arange(len(segments)))
        return disagreement_pairs(segments, count, self.rng, returns)

    def label(self, directory: Path) -> int:
        from vla_gym.training.label_store import LabelStore
        from vla_gym.training.preferences import Oracle, read_query_set

        oracle = Oracle(replace(self.config.oracle,
                                seed=self.config.oracle.seed + len(self.query_dirs)))
        with LabelStore(self.labels_path) as store:
            return oracle.label(read_query_set(directory, check_clips=False), store)

    def fit_reward(self, iteration: int) -> dict[str, Any]:
        from vla_gym.training.preferences import load_preferences
        from vla_gym.training.reward_model import train_reward_model

        sources = [(d, self.labels_path) for d in self.query_dirs] + self.extra_queries
        prefs = load_preferences(sources, env_id=self.config.env_id)
        reward_cfg = replace(self.config.reward, seed=self.config.reward.seed + iteration)
        result = train_reward_model(prefs, reward_cfg, log=self.log)
        if self.reward_model is None:
            self.reward_model = result.model
        else:  # in place: the running envs' LearnedReward wrappers read this object
            self.reward_model.load_state_dict(result.model.state_dict())
        self.reward_model.save(self.out / f"iter_{iteration}" / "reward_model")
        return result.metrics

    def improve(self, iteration: int) -> dict[str, Any]:
        """RL for this iteration's share of steps; returns what the training episodes showed."""
        from stable_baselines3.common.callbacks import CallbackList

        from vla_gym.training.sb3_init import export_policy

        steps = self.config.share(self.config.rl_steps, iteration)
        if steps == 0:
            return {"steps": 0}
        if self.config.rl.algo == "rft":
            return self._improve_ranked(steps)
        if self.model is None:
            self.model = self._build()
        seen = len(self.reward_log.episodes)
        rl = self.config.rl
        callbacks: list[Any] = [self.reward_log]
        if rl.algo == "ppo":
            callbacks.append(CriticWarmup(rl.critic_warmup))
            if rl.bc_loss_weight > 0:
                callbacks.append(self.bc_regulariser)
        self.model.learn(total_timesteps=steps, callback=CallbackList(callbacks),
                         reset_num_timesteps=iteration == 0)
        self.current = export_policy(self.model.policy, self.bc)
        return {"steps": steps, "total_steps": int(self.model.num_timesteps),
                **self.reward_log.summary(seen)}

    def _improve_ranked(self, steps: int) -> dict[str, Any]:
        """Reward-ranked fine-tuning (:mod:`vla_gym.training.rft`): episodes ranked by the
        learned reward (the env's for the true-reward anchor)."""
        from vla_gym.training.rft import RankedFineTuning

        cfg = self.config
        if self.ranked is None:
            if not cfg.true_reward and self.reward_model is None:
                raise RuntimeError("RL from preferences needs a reward model first")
            limit = gym.spec(cfg.env_id).max_episode_steps or 100
            self.ranked = RankedFineTuning(self.bc, cfg.rl, cfg.env_id, self.env_kwargs,
                                           int(self.env_kwargs.get("max_episode_steps", limit)))
        score = None if cfg.true_reward else self.reward_model.predict
        result = self.ranked.improve(steps, score)
        self.current = self.ranked.policy
        return result

    def _build(self) -> Any:
        cfg = self.config
        if not cfg.true_reward and self.reward_model is None:
            raise RuntimeError("RL from preferences needs a reward model first")
        venv = make_rl_env(cfg.env_id, self.env_kwargs, self.bc,
                           None if cfg.true_reward else self.reward_model, cfg.rl.bc_weight,
                           cfg.rl.n_envs, cfg.seed)
        if cfg.rl.normalize_reward:
            from stable_baselines3.common.vec_env import VecNormalize

            venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=cfg.rl.gamma)
        return build_model(self.bc, venv, cfg.rl, self.out / "tb")

    def evaluate(self, policy: Any) -> dict[str, Any]:
        from vla_gym.evaluation import evaluate
        from vla_gym.policies import BatchPolicyAdapter

        report = evaluate(BatchPolicyAdapter(policy), self.config.env_id,
                          episodes=self.config.eval_episodes, seed=self.config.eval_seed,
                          counterfactual_episodes=0,
                          env_kwargs=eval_env_kwargs(self.config, policy))
        return _eval_figures(report)

    def save(self, iteration: int) -> None:
        directory = self.out / f"iter_{iteration}"
        self.current.save_pretrained(directory / "policy")
        if self.model is not None:
            self.model.save(directory / "sb3_model.zip")

    # -- the loop ------------------------------------------------------------------------
    def iteration(self, k: int) -> dict[str, Any]:
        started = time.perf_counter()
        entry: dict[str, Any] = {"iteration": k}
        if not self.config.true_reward:
            directory = self.collect_queries(k)
            entry["labels_added"] = self.label(directory)
            entry["labels_total"] = self.labels_used()
            entry["selection"] = self._selection(k) if k else "random"
            entry["reward_model"] = self.fit_reward(k)
            self.log(f"iter {k}: {entry['labels_total']} labels, reward model held-out "
                     f"accuracy {entry['reward_model']['held_out_accuracy']:.3f}")
        entry["rl"] = self.improve(k)
        self.save(k)
        entry["eval"] = self.evaluate(self.current)
        entry["seconds"] = time.perf_counter() - started
        self.log(f"iter {k}: success {entry['eval']['success_rate']:.1%} "
                 f"({entry['seconds']:.0f} s)")
        return entry

    def rl_steps(self) -> int:
        """Env steps the RL learner has taken so far."""
        learner = self.model if self.model is not None else self.ranked
        return int(learner.num_timesteps) if learner is not None else 0

    def labels_used(self) -> int:
        from vla_gym.training.label_store import LabelStore

        if not self.labels_path.exists():
            return 0
        with LabelStore(self.labels_path) as store:
            return len(store.labels("oracle"))

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.metrics["bc_eval"] = self.evaluate(self.bc)
        self.log(f"BC: success {self.metrics['bc_eval']['success_rate']:.1%}")
        for k in range(self.config.iterations):
            self.metrics["iterations"].append(self.iteration(k))
            write_json(self.out / "metrics.json", self.metrics)
        self.current.save_pretrained(self.out / "policy")
        final = self.metrics["iterations"][-1]["eval"]
        self.metrics["final"] = {
            "eval": final, "labels": self.labels_used(),
            "rl_steps": self.rl_steps(),
            "success_gain": final["success_rate"] - self.metrics["bc_eval"]["success_rate"],
            "seconds": time.perf_counter() - started}
        write_json(self.out / "metrics.json", self.metrics)
        return self.metrics


def run_rlhf(config: RLHFConfig, bc_path: str | Path, out: str | Path,
             extra_queries: list[tuple[Path, Path]] | None = None,
             log: Log | None = None) -> dict[str, Any]:
    """The loop of the module docstring; returns (and writes) ``RUN/metrics.json``."""
    return RLHFRun(config, bc_path, out, extra_queries, log).run()
