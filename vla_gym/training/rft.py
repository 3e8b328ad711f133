"""Reward-ranked fine-tuning (``RLConfig.algo="rft"``): the RL step of the preference loop as
filtered behaviour cloning on the policy's own best episodes.

Each :meth:`RankedFineTuning.improve` call spends its env steps on whole episodes of the
current policy, each with Gaussian action noise of one of ``RLConfig.rft_noise`` (in units of
the policy's action std, see :func:`action_scale`; fresh seeds drawn from the run's seed).
Every episode is scored by its return under ``score`` (the learned reward ensemble in RLHF;
the env's reward only for the true-reward anchor); the top ``rft_keep`` fraction of the call's
episodes joins an elite buffer that grows over the loop's iterations. The policy is then
fine-tuned on the elite buffer's observations and executed actions with its own training loss,
plus ``bc_weight`` times the action loss toward the BC policy's action on each observation:
the constraint keeping it near BC (as PPO's penalty does), acting on the policy's output
directly. With ``rft_hindsight``, a kept episode that lifted an object also labels the policy's
target map with where that object was (:func:`hindsight_pixels`), so perception, which the
action loss barely reaches, learns from the episodes the learned reward ranked best.

This is reward-weighted regression with a 0/1 weight at a quantile, as RAFT / ReST-style loops
do with a learned reward: no critic, no SB3 model, and its env steps are rollouts only. It can
only reinforce what the rollouts already do now and then, and action noise rarely carries a
policy that goes for the wrong object to the right one. ``rft_explore`` explores over *which
object* instead: each scene is also tried with the policy's maps steered at each of its
strongest target candidates (:func:`focus_points`), and only the scene's best try by learned
return enters the ranking. ``rft_map_anchor`` holds the maps near the BC policy's on the fit's
frames, as ``bc_weight`` holds the actions. Figures in the README. The env's reward and success
are recorded per episode for the logs only; with a learned ``score`` they never choose an
episode.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vla_gym.policies.geometry import EE_POS
from vla_gym.policies.preprocessing import stack_observations
from vla_gym.training.augment import shift_views
from vla_gym.types import FOCUS, INSTRUCTION, STATE, anchor_map_key, pixel_label

# How far the effector must rise with the gripper shut for a grasp to count as a lift.
LIFT_M = 0.03

# (B observations after a step) -> (B,) rewards; what ranks episodes (None: the env's reward,
# for the true-reward anchor only)
Score = Callable[[dict[str, Any]], np.ndarray] | None


@dataclass
class Episode:
    """One rollout: the observation each action was taken from, the executed actions, the BC
    policy's action on each observation, and its returns (``learned``: what ranks it)."""

    observations: dict[str, Any]
    actions: np.ndarray
    bc_actions: np.ndarray
    learned_return: float = 0.0
    true_return: float = 0.0
    success: bool = False
    noise: float = 0.0
    focus_rank: int | None = None  # which target candidate steered it (None: the policy's own)
    # per pixel-label key (``types.pixel_label``), (T, 2) hindsight labels (hindsight_pixels)
    labels: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Running:
    """Per-env lists while a batch of episodes rolls out."""

    observations: list[dict[str, Any]] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    bc_actions: list[np.ndarray] = field(default_factory=list)
    learned: float = 0.0
    true: float = 0.0
    success: bool = False


def _row(batch: dict[str, Any], i: int) -> dict[str, Any]:
    return {k: (v[i] if k == INSTRUCTION else np.array(v[i])) for k, v in batch.items()}


def roll_out(env_id: str, env_kwargs: dict[str, Any], policy: Any, bc_policy: Any,
             score: Score, seeds: list[int], noises: list[float], rng: np.random.Generator,
             num_envs: int = 4, ranks: list[int | None] | None = None,
             correlation: float = 0.0) -> list[Episode]:
    """One episode per seed, acting with ``policy`` plus that episode's noise (clipped to the
    action space); ``score`` rates each step's resulting observation. ``ranks``: per
    episode, which of the policy's target candidates steers it (:func:`focus_points`; None:
    its own choice); the observations then carry the focus (``types.FOCUS``).
    ``correlation``: the noise's step-to-step correlation (:class:`ActionNoise`)."""
    from gymnasium.vector import AutoresetMode

    from vla_gym.vector import make_vec

    if len(seeds) != len(noises):
        raise ValueError(f"one noise level per seed: {len(seeds)} seeds, {len(noises)} noises")
    if ranks is not None and len(ranks) != len(seeds):
        raise ValueError(f"one focus rank per seed: {len(seeds)} seeds, {len(ranks)} ranks")
    episodes: list[Episode] = []
    for start in range(0, len(seeds), num_envs):
        chunk = seeds[start:start + num_envs]
        vec: Any = make_vec(env_id, num_envs=len(chunk), vector_kwargs={
            "autoreset_mode": AutoresetMode.DISABLED}, **env_kwargs)
        try:
            episodes += _roll_chunk(vec, policy, bc_policy, score, chunk,
                                    noises[start:start + num_envs], rng,
                                    None if ranks is None else ranks[start:start + num_envs],
                                    correlation)
        finally:
            vec.close()
    return episodes


class ActionNoise:
    """Gaussian exploration noise of std ``sigma`` (per episode and action dimension), white
    when ``correlation`` is 0, else an AR(1) process with that step-to-step correlation and
    the same std (``n_t = rho n_(t-1) + sqrt(1 - rho^2) e_t``, started from its stationary
    law). White noise averages out over the dozens of steps a motion lasts, so an episode's
    return hardly depends on it and ranking episodes selects little of it; correlated noise
    makes whole motions faster or slower, further one way or the other, which the ranking can
    then pick (as a cautious demonstrator's slow lift needs)."""

    def __init__(self, sigma: np.ndarray, correlation: float,
                 rng: np.random.Generator) -> None:
        if not 0.0 <= correlation < 1.0:
            raise ValueError(f"noise correlation must be in [0, 1), got {correlation}")
        self.sigma, self.correlation, self.rng = sigma, float(correlation), rng
        self._state: np.ndarray | None = None

    def __call__(self, shape: tuple[int, ...]) -> np.ndarray:
        fresh = self.rng.standard_normal(shape, dtype=np.float32)
        if self.correlation == 0.0:
            return self.sigma * fresh
        if self._state is None:
            self._state = fresh
        else:
            rho = self.correlation
            self._state = (rho * self._state + np.float32(np.sqrt(1.0 - rho * rho)) * fresh
                           ).astype(np.float32)
        return self.sigma * self._state


def action_scale(policy: Any) -> np.ndarray:
    """Per action dimension, how much the policy's demos varied (its action std, at most 1):
    noise is drawn in these units. A dimension the demos held constant (say, a rotation the
    expert never used) gets none; plain noise there would be a target the policy's action
    loss, in standardised units, weighs by 1/std^2 (1e12 for a constant column)."""
    normalizer = getattr(policy, "normalizer", None)
    if normalizer is None:
        return np.float32(1.0)
    return np.minimum(normalizer.action_std.detach().cpu().numpy(), 1.0).astype(np.float32)


def focus_points(policy: Any, obs: dict[str, Any], ranks: list[int | None]) -> np.ndarray:
    """(B, 3) per observation, the world point of the policy's ``ranks[i]``-th strongest
    target candidate (``VLAPolicy.target_candidates``), NaN where the rank is None.

    This is exploration over *which object*: action noise rarely carries a policy that goes
    for the wrong object to the right one, but steering its maps at its second or third
    guess does, and the learned reward can then say which try did what was asked."""
    focus = np.full((len(ranks), 3), np.nan, np.float32)
    wanted = [r for r in ranks if r is not None]
    if wanted:
        candidates = policy.target_candidates(obs, max(wanted) + 1)
        for i, rank in enumerate(ranks):
            if rank is not None:
                focus[i] = candidates[i, rank]
    return focus


class FocusedPolicy:
    """A batch policy ``(obs, info) -> actions`` steered at ``policy``'s ``rank``-th target
    candidate, chosen on the first observation after :meth:`reset` and held for the episode
    (for rollouts that cut preference queries, beside the policy's own behaviour)."""

    def __init__(self, policy: Any, rank: int) -> None:
        self.policy, self.rank = policy, rank
        self.focus: np.ndarray | None = None

    def reset(self) -> None:
        self.focus = None

    def __call__(self, obs: dict[str, Any], info: dict[str, Any] | None = None) -> np.ndarray:
        rows = len(obs[INSTRUCTION])
        if self.focus is None:
            self.focus = focus_points(self.policy, obs, [self.rank] * rows)
        elif len(self.focus) != rows:
            raise ValueError(f"FocusedPolicy holds {len(self.focus)} episodes' focus but got "
                             f"{rows} observations; call reset() when new episodes start")
        return self.policy.predict({**obs, FOCUS: self.focus})


def _roll_chunk(vec: Any, policy: Any, bc_policy: Any, score: Score, seeds: list[int],
                noises: list[float], rng: np.random.Generator,
                ranks: list[int | None] | None, correlation: float = 0.0) -> list[Episode]:
    space = vec.single_action_space
    obs, _ = vec.reset(seed=list(seeds))
    focus = None if ranks is None else focus_points(policy, obs, ranks)
    running = [_Running() for _ in seeds]
    done = np.zeros(len(seeds), bool)
    noise = ActionNoise(np.asarray(noises, np.float32)[:, None] * action_scale(policy),
                        correlation, rng)
    while not done.all():
        inputs = obs if focus is None else {**obs, FOCUS: focus}
        mean = policy.predict(inputs)
        reference = mean if bc_policy is policy else bc_policy.predict(inputs)
        actions = mean + noise(mean.shape)
        actions = np.clip(actions, space.low, space.high).astype(np.float32)
        before = inputs
        obs, true_reward, terminated, truncated, info = vec.step(actions)
        learned = true_reward if score is None else score(obs)
        success = np.asarray(info.get("is_success", np.zeros(len(seeds), bool)))
        for i, run in enumerate(running):
            if done[i]:
                continue
            run.observations.append(_row(before, i))
            run.actions.append(actions[i])
            run.bc_actions.append(reference[i])
            run.learned += float(learned[i])
            run.true += float(true_reward[i])
            run.success = run.success or bool(success[i])
        done |= np.logical_or(terminated, truncated)
    return [Episode(stack_observations(r.observations), np.stack(r.actions), np.stack(r.bc_actions),
                    r.learned, r.true, r.success, float(n),
                    None if ranks is None else ranks[i])
            for i, (r, n) in enumerate(zip(running, noises, strict=True))]


def hindsight_pixels(policy: Any, episode: Episode) -> dict[str, np.ndarray]:
    """Target-map labels for an episode that lifted an object, from the episode alone: where
    that object appears in each calibrated view, frame by frame.

    The grasp is the closed-gripper run that lifted the effector most (:func:`lifting_grasp`);
    the object is taken to be where the effector was when that run began (the state gives the
    effector's pose) until then, to move with the effector during it, and to be unknown (NaN)
    after a release. The policy's own camera calibration (``policy.trunk.geometry``) projects
    it into each world-fixed view; cameras on the effector get no labels: the grasp point sits
    ~2 cm above the object's centre, a few hundredths of the main camera's image but ~0.09 of
    a wrist camera's a hand's width away (measured on the scripted expert's lifts). Episodes
    without such a grasp, and policies without target geometry or a gripper, get none.

    For a kept episode these say "the named object is the one this episode picked up", which
    the learned reward chose: the kind of label BC's target maps learn from."""
    geometry = getattr(policy.trunk, "geometry", None)
    grip = policy.config.contract.grip_index
    if geometry is None or grip is None:
        return {}
    state = np.asarray(episode.observations[STATE], np.float32)
    grasp = lifting_grasp(episode.actions[:, grip] > 0, state[:, EE_POS[2]])
    if grasp is None:
        return {}
    onset, end = grasp
    points = state[:, list(EE_POS)].copy()
    points[:onset] = points[onset]
    pixels = geometry.project(torch.as_tensor(points), torch.as_tensor(state))
    labels = {}
    for view, value in pixels.items():
        if geometry.on_effector[geometry.views.index(view)]:
            continue  # see the docstring: a camera this close magnifies the height error
        value = value.numpy().astype(np.float32)
        value[end:] = np.nan  # once released, where the object went is not known
        labels[pixel_label(view)] = value
    return labels


def lifting_grasp(closed: np.ndarray, ee_z: np.ndarray, min_rise_m: float = LIFT_M
                  ) -> tuple[int, int] | None:
    """[start, end) of the run of closed-gripper commands during which the effector rose the
    most, if by at least ``min_rise_m``: the grasp that lifted something. None without one."""
    best, best_rise = None, min_rise_m
    start = None
    for t, shut in enumerate([*closed, False]):
        if shut and start is None:
            start = t
        elif not shut and start is not None:
            rise = float(ee_z[start:t].max() - ee_z[start])
            if rise >= best_rise:
                best, best_rise = (start, t), rise
            start = None
    return best


def reference_maps(policy: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """``policy``'s target-map logits on ``batch``'s frames, per view under
    ``types.anchor_map_key(view)``: what the map anchor holds a fine-tuned policy's maps to."""
    with torch.no_grad():
        out = policy.features(policy.preprocess(batch))
    maps = (out.target_map, *out.extra_maps)
    return {anchor_map_key(view): logits.float().cpu().numpy()
            for view, logits in zip(policy.config.views, maps) if logits is not None}


def best_per_scene(episodes: list[Episode], seeds: list[int]) -> list[Episode]:
    """Each seed's episode with the highest learned return (ties keep the earlier), in the
    order seeds first appear: of several tries at one scene, the one the reward ranks best."""
    best: dict[int, Episode] = {}
    for seed, episode in zip(seeds, episodes, strict=True):
        if seed not in best or episode.learned_return > best[seed].learned_return:
            best[seed] = episode
    return list(best.values())


def top_episodes(episodes: list[Episode], keep: float) -> list[Episode]:
    """The ``keep`` fraction (at least one) with the highest learned return; ties keep the
    earlier episode."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    count = max(1, int(round(keep * len(episodes))))
    order = sorted(range(len(episodes)), key=lambda i: (-episodes[i].learned_return, i))
    return [episodes[i] for i in order[:count]]


class EliteBuffer:
    """Kept episodes' steps as flat arrays, sampled uniformly."""

    def __init__(self) -> None:
        self.episodes: list[Episode] = []
        self._flat: dict[str, Any] | None = None

    def add(self, episodes: list[Episode]) -> None:
        self.episodes += episodes
        self._flat = None

    def __len__(self) -> int:
        return sum(len(e.actions) for e in self.episodes)

    def _arrays(self) -> dict[str, Any]:
        if self._flat is None:
            keys = self.episodes[0].observations.keys()
            flat: dict[str, Any] = {
                k: (np.array([t for e in self.episodes for t in e.observations[k]], dtype=object)
                    if k == INSTRUCTION else
                    np.concatenate([e.observations[k] for e in self.episodes])) for k in keys}
            flat["action"] = np.concatenate([e.actions for e in self.episodes])
            flat["anchor_action"] = np.concatenate([e.bc_actions for e in self.episodes])
            # an episode without a view's labels contributes NaN rows: the map loss skips them
            for key in sorted({k for e in self.episodes for k in e.labels}):
                flat[key] = np.concatenate([
                    e.labels.get(key, np.full((len(e.actions), 2), np.nan, np.float32))
                    for e in self.episodes])
            self._flat = flat
        return self._flat

    def sample(self, size: int, rng: np.random.Generator) -> dict[str, Any]:
        if not self.episodes:
            raise ValueError("the elite buffer is empty")
        arrays = self._arrays()
        rows = rng.integers(0, len(arrays["action"]), size)
        return {k: ([str(t) for t in v[rows]] if k == INSTRUCTION else v[rows])
                for k, v in arrays.items()}


class RankedFineTuning:
    """The loop's RL learner for ``algo="rft"``: keeps its own copy of the policy (the BC
    policy it is given stays as it was, for the anchor)."""

    def __init__(self, bc_policy: Any, rl: Any, env_id: str, env_kwargs: dict[str, Any],
                 max_episode_steps: int) -> None:
        self.bc, self.rl, self.env_id, self.env_kwargs = bc_policy, rl, env_id, env_kwargs
        self.episode_steps = max_episode_steps
        self.policy = copy.deepcopy(bc_policy)
        self.policy.trunk.cache.clear()
        self.optimizer = torch.optim.AdamW(
            [p for p in self.policy.parameters() if p.requires_grad], lr=rl.rft_lr,
            weight_decay=0.0)
        self.rng = np.random.default_rng(rl.seed)
        self.buffer = EliteBuffer()
        self.num_timesteps = 0
        self.scenes_run = 0  # each scene gets its own seed, seed_base + its number
        self.seed_base = 2_000_000 + 100_000 * int(rl.seed)

    def improve(self, steps: int, score: Score) -> dict[str, Any]:
        """Roll out ``steps // episode length`` episodes (at least one scene's worth), keep
        the best, fit. With ``rft_explore`` each scene gets the policy's own episode plus one
        steered at each of its top ``rft_explore`` target candidates, and only the scene's
        best try enters the ranking."""
        tries = 1 + self.rl.rft_explore
        scenes = max(1, steps // self.episode_steps // tries)
        seeds = [self.seed_base + self.scenes_run + i for i in range(scenes) for _ in
                 range(tries)]
        self.scenes_run += scenes
        ranks: list[int | None] | None = None
        if self.rl.rft_explore:
            ranks = [None, *range(self.rl.rft_explore)] * scenes
        levels = self.rl.rft_noise
        noises = [levels[i % len(levels)] for i in range(len(seeds))]
        self.policy.eval()
        episodes = roll_out(self.env_id, self.env_kwargs, self.policy, self.bc, score, seeds,
                            noises, self.rng, self.rl.n_envs, ranks,
                            self.rl.rft_noise_correlation)
        self.num_timesteps += sum(len(e.actions) for e in episodes)
        kept = top_episodes(best_per_scene(episodes, seeds), self.rl.rft_keep)
        if self.rl.rft_hindsight:
            for episode in kept:
                episode.labels = hindsight_pixels(self.policy, episode)
        self.buffer.add(kept)
        losses = self._fit()
        return {"steps": int(sum(len(e.actions) for e in episodes)),
                "total_steps": self.num_timesteps, "episodes": len(episodes),
                "kept": len(kept), "elite_episodes": len(self.buffer.episodes),
                "mean_true_return": float(np.mean([e.true_return for e in episodes])),
                "mean_reward_return": float(np.mean([e.learned_return for e in episodes])),
                "mean_success": float(np.mean([e.success for e in episodes])),
                "kept_success": float(np.mean([e.success for e in kept])),
                "kept_with_labels": sum(bool(e.labels) for e in kept),
                "kept_steered": sum(e.focus_rank is not None for e in kept),
                "fit_loss_first": losses[0], "fit_loss_last": losses[-1]}

    def _fit(self) -> list[float]:
        """``rft_updates`` gradient steps on random-shifted batches of the elite buffer: the
        policy's training loss on the executed actions (with its map losses on the hindsight
        labels) + ``bc_weight`` x the action loss toward the BC actions."""
        policy, rl = self.policy, self.rl
        policy.train()
        losses = []
        try:
            for _ in range(rl.rft_updates):
                batch = shift_views(self.buffer.sample(rl.batch_size, self.rng),
                                    policy.config.views, rl.rft_shift, self.rng)
                if rl.rft_map_anchor:
                    batch.update(reference_maps(self.bc, batch))
                loss, _ = policy(batch, anchor_weight=rl.bc_weight)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                self.optimizer.step()
                losses.append(float(loss.item()))
        finally:
            policy.eval()
            policy.trunk.cache.clear()  # instruction features cached before the update
        return losses
