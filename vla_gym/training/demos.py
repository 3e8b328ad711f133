"""Demonstrations in memory, as the BC trainer samples them.

Transitions are flat arrays (images stay uint8: 200 pick episodes at 96 px are ~0.3 GB) with
an episode index, so batches are fancy-indexed in one step. ``Demos`` comes from a recorded
dataset (``from_dataset``) or straight from an expert in memory (``from_expert``, for tests
and quick experiments).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_gym.envs.language.referring import RELATIONS
from vla_gym.types import (
    CAMERA_OF_VIEW,
    IMAGE,
    INSTRUCTION,
    LANDMARK_LABELS,
    PIXEL_LABELS,
    STATE,
    ActionContract,
)

# Per-step ground truth the grounding losses learn from, recorded next to each frame: the
# target's position, and where it appears in each camera's image (``types.pixel_label``).
POSITION_LABELS = ("target_pos", *PIXEL_LABELS, *LANDMARK_LABELS)
# Grounding-only scenes (``from_expert(grounding_scenes=...)``) take seeds from here on: far
# from demo seeds (0, 1, ...) and from evaluation seeds (100 000 on).
GROUNDING_SEEDS = 50_000
# Learner rollouts labelled by the expert (``learner_episodes``, DAgger) take seeds from here
# on, clear of the demo, grounding and evaluation seeds.
LEARNER_SEEDS = 70_000
# An instruction naming its object by a spatial relation ("the cube left of the plate").
RELATIONAL_PHRASE = re.compile(r"\b(?:" + "|".join(RELATIONS) + r")\b")
APPROACH_EVERY = 6  # steps between the grounding frames kept along an approach
APPROACH_STEPS = 30  # steps of each approach (about where a pick's grasp begins)
# A knocked grasp (``from_expert(grasp_misses=...)``): when the expert first closes the
# gripper, the executed action instead carries the open gripper KNOCK_DISTANCE off the grasp
# point over KNOCK_STEPS steps (level to steeply rising, any heading), where a cloned policy's
# misses put it; these steps are not recorded (their labels would be the expert's "close").
# The demos go on from the missed spot: the expert backing off and grasping again.
KNOCK_STEPS = 4
KNOCK_DISTANCE = (0.03, 0.04)  # m; at most 1 cm a step, the action range's limit
KNOCK_MAX_RISE = np.pi / 3  # rad above level
# A gripper blip (``from_expert(grip_blips=...)``): while the expert holds the gripper open, the
# executed action closes it for a few steps; the recorded labels stay the expert's "open". A
# cloned policy reads the gripper opening in its state, and in clean demos a partly closed
# gripper always comes with the label "close": one slightly-closing output then feeds on
# itself and the policy grasps at air. Blips show a half-closed gripper away from the object
# being opened again.
BLIP_STEPS = (2, 7)  # executed-closed steps of one blip (upper bound excluded)
# Image keys besides the main camera's that demos keep when the env emits them.
EXTRA_VIEWS = tuple(view for view in CAMERA_OF_VIEW if view != IMAGE)
# Demos' per-transition arrays (besides ``views``), as ``save`` writes them.
_ROW_FIELDS = ("images", "instructions", "states", "actions", "episode", "targets",
               *POSITION_LABELS)
_TEXT_FIELDS = ("instructions", "targets")


@dataclass
class Demos:
    env_id: str
    env_kwargs: dict[str, Any]
    contract: ActionContract
    images: np.ndarray  # (N, H, W, 3) uint8
    instructions: np.ndarray  # (N,) str (object array)
    states: np.ndarray  # (N, D) float32
    actions: np.ndarray  # (N, A) float32
    episode: np.ndarray  # (N,) int: which episode each transition belongs to
    target_pos: np.ndarray | None = None  # (N, 3)
    target_pixel: np.ndarray | None = None  # (N, 2) image (column, row) in [0, 1]; NaN unseen
    wrist_target_pixel: np.ndarray | None = None  # (N, 2) the same in the wrist camera's image
    top_target_pixel: np.ndarray | None = None  # (N, 2) the same in the overhead camera's image
    # (N, 2) where the object a spatial relation names the target by is, per camera (the
    # target's own pixel for a plain instruction; ``types.landmark_label``)
    landmark_pixel: np.ndarray | None = None
    wrist_landmark_pixel: np.ndarray | None = None
    top_landmark_pixel: np.ndarray | None = None
    targets: np.ndarray | None = None  # (N,) target names
    views: dict[str, np.ndarray] = field(default_factory=dict)  # extra cameras, like images
    # Frames of the same scenes with the instruction naming another object, and that object's
    # position: labels for the grounding loss only (their actions are NaN, never cloned).
    grounding_frames: Demos | None = None

    def __post_init__(self) -> None:
        n = len(self.actions)
        for name in ("images", "instructions", "states", "episode"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Demos.{name} has {len(getattr(self, name))} rows, "
                                 f"actions has {n}")
        for key, images in self.views.items():
            if images.shape != self.images.shape or images.dtype != np.uint8:
                raise ValueError(f"Demos.views[{key!r}] must be uint8 {self.images.shape} like "
                                 f"images, got {images.dtype} {images.shape}")
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"Demos.images must be uint8 (N, H, W, 3), got "
                             f"{self.images.dtype} {self.images.shape}")
        if self.actions.shape[1] != self.contract.dim:
            raise ValueError(f"actions are {self.actions.shape[1]}-D but {self.contract.name} "
                             f"has {self.contract.dim} dims")

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def state_dim(self) -> int:
        return int(self.states.shape[1])

    @property
    def num_episodes(self) -> int:
        return int(len(np.unique(self.episode)))

    def batch(self, index: np.ndarray) -> dict[str, Any]:
        batch: dict[str, Any] = {
            IMAGE: self.images[index], INSTRUCTION: list(self.instructions[index]),
            STATE: self.states[index], "action": self.actions[index],
            **{key: images[index] for key, images in self.views.items()},
        }
        for key in POSITION_LABELS:
            values = getattr(self, key)
            if values is not None:
                batch[key] = values[index]
        if self.targets is not None:
            batch["target"] = list(self.targets[index])
        return batch

    @classmethod
    def from_episodes(cls, env_id: str, env_kwargs: dict[str, Any], contract: ActionContract,
                      episodes: Iterable[dict[str, Any]]) -> Demos:
        """Stack episodes given as dicts of per-step arrays (observations before each action).

        Each episode needs ``image``, ``instruction`` (one str or one per step), ``state``,
        ``action``; ``target_pos`` and ``target`` are optional.
        """
        parts: dict[str, list] = {k: [] for k in ("images", "instructions", "states", "actions",
                                                  "episode", "targets", *POSITION_LABELS,
                                                  *EXTRA_VIEWS)}
        for number, ep in enumerate(episodes):
            steps = len(ep["action"])
            text = ep[INSTRUCTION]
            parts["images"].append(np.asarray(ep[IMAGE][:steps], np.uint8))
            for key in EXTRA_VIEWS:
                if key in ep:
                    parts[key].append(np.asarray(ep[key][:steps], np.uint8))
            parts["instructions"].append(np.array(
                [text] * steps if isinstance(text, str) else list(text)[:steps], dtype=object))
            parts["states"].append(np.asarray(ep[STATE][:steps], np.float32))
            parts["actions"].append(np.asarray(ep["action"], np.float32))
            parts["episode"].append(np.full(steps, number))
            for key in POSITION_LABELS:
                if key in ep:
                    parts[key].append(np.asarray(ep[key][:steps], np.float32))
            if "target" in ep:
                target = ep["target"]
                parts["targets"].append(np.array(
                    [target] * steps if isinstance(target, str) else list(target)[:steps],
                    dtype=object))
        if not parts["actions"]:
            raise ValueError("no episodes to build demos from")
        views = {}
        for key in EXTRA_VIEWS:
            chunks = parts.pop(key)
            if chunks and len(chunks) != len(parts["images"]):
                raise ValueError(f"some episodes have {key!r} and some do not")
            if chunks:
                views[key] = np.concatenate(chunks)
        stacked = {k: np.concatenate(v) if v else None for k, v in parts.items()}
        return cls(env_id, dict(env_kwargs), contract, **stacked, views=views)

    @classmethod
    def from_expert(cls, env_id: str, episodes: int, seed: int = 0, noise: float = 0.0,
                    noisy_fraction: float = 0.75, other_targets: bool = False,
                    grounding_scenes: int = 0, grasp_misses: float = 0.0,
                    grip_blips: float = 0.0, relational_grounding: bool = False,
                    expert_options: dict[str, Any] | None = None,
                    **env_kwargs: Any) -> Demos:
        """Record ``episodes`` expert episodes in memory (episode j from seed + j).

        ``noise`` > 0: that fraction of the episodes is executed with Gaussian action noise of
        std ``noise`` (DART, see ``_record``); the rest are clean. ``other_targets``: also keep
        each scene's first frame once per other object the task could name, instructed to that
        object (``grounding_frames``): the same scenes, five-odd grounding labels each, so the
        grounding loss cannot be met by remembering where each scene's one target lies.
        ``grounding_scenes``: that many further scenes (seeds ``GROUNDING_SEEDS + seed + j``),
        seen only by the grounding losses: for each object the task could name, frames every
        ``APPROACH_EVERY`` steps of the expert's (noisy) approach to it, instructed to it. They
        are perception data, not demonstrations: their actions are NaN and never cloned.
        ``grasp_misses``: the fraction of episodes whose first grasp is knocked off target
        (see ``KNOCK_STEPS``), so the demos show recovering from a missed grasp; only action
        contracts with a ``grip`` dimension have grasps to knock. ``grip_blips``: in the
        episodes drawn noisy (``noisy_fraction``), the chance each step that a gripper blip
        (see ``BLIP_STEPS``) starts while the expert holds the gripper open.
        ``relational_grounding``: in the grounding scenes, each object that a spatial relation
        can name ("the ball left of the plate") is approached once more under such an
        instruction (``_relational_instruction``); the env draws that form for a few objects
        in four, and it is the one cloned policies ground worst (on Pick the extra approaches
        did not raise its success rate; README, "Demonstrations, behaviour cloning").
        ``expert_options``: the expert's settings (``make_expert``), e.g. ``{"lift_speed":
        0.1}`` for a deliberately slow demonstrator."""
        import gymnasium as gym


        if noise < 0 or not 0.0 <= noisy_fraction <= 1.0:
            raise ValueError(f"noise must be >= 0 and noisy_fraction in [0, 1], got {noise}, "
                             f"{noisy_fraction}")
        if grounding_scenes < 0:
            raise ValueError(f"grounding_scenes must be >= 0, got {grounding_scenes}")
        if not 0.0 <= grasp_misses <= 1.0:
            raise ValueError(f"grasp_misses must be a fraction in [0, 1], got {grasp_misses}")
        if not 0.0 <= grip_blips <= 1.0:
            raise ValueError(f"grip_blips must be a per-step chance in [0, 1], got {grip_blips}")
        env = gym.make(env_id, **env_kwargs)
        expert = expert_for(env, expert_options)
        rng = np.random.default_rng(seed)
        noisy = rng.random(episodes) < noisy_fraction
        # Drawn only when asked for, so demos without knocks stay as they were recorded before.
        knocked = (rng.random(episodes) < grasp_misses if grasp_misses > 0
                   else np.zeros(episodes, bool))
        contract = env.unwrapped.action_contract
        try:
            _check_relational(env, relational_grounding)  # before the demos, not after them
            recorded = [_record(env, expert, seed + j, noise if noisy[j] else 0.0, rng,
                                knock=bool(knocked[j]),
                                blips=grip_blips if noisy[j] else 0.0) for j in range(episodes)]
            frames = [frame for j in range(episodes) if other_targets
                      for frame in _other_target_frames(env, seed + j)]
            frames += _grounding_scene_frames(env, expert, grounding_scenes, seed, noise, rng,
                                              relational_grounding)
        finally:
            env.close()
        demos = cls.from_episodes(env_id, env_kwargs, contract, recorded)
        if frames:
            demos.grounding_frames = cls.from_episodes(env_id, env_kwargs, contract, frames)
        return demos

    def with_grounding_scenes(self, scenes: int, seed: int = 0, noise: float = 0.3,
                              relational: bool = False) -> Demos:
        """These demos plus ``scenes`` grounding-only scenes recorded in their env (as
        ``from_expert(grounding_scenes=...)`` adds them; seeds from ``GROUNDING_SEEDS + seed``,
        the approaches' noise from ``seed``; ``relational`` as ``relational_grounding``
        there), after any grounding frames they already have."""
        import gymnasium as gym

        from vla_gym.experts import make_expert

        if scenes < 1:
            raise ValueError(f"scenes must be >= 1, got {scenes}")
        env = gym.make(self.env_id, **self.env_kwargs)
        try:
            _check_relational(env, relational)
            frames = _grounding_scene_frames(env, make_expert(env), scenes, seed, noise,
                                             np.random.default_rng(seed), relational)
        finally:
            env.close()
        added = Demos.from_episodes(self.env_id, self.env_kwargs, self.contract, frames)
        if self.grounding_frames is not None:
            added = _concatenate(self.grounding_frames, added)
        return dataclasses.replace(self, grounding_frames=added)

    def with_episodes(self, more: Demos) -> Demos:
        """These demos then ``more``'s episodes (renumbered after these), recorded in the same
        env; the grounding frames are these demos' then ``more``'s."""
        if more.env_id != self.env_id or _kwargs_key(more.env_kwargs) != _kwargs_key(
                self.env_kwargs):
            raise ValueError(f"cannot add episodes of {more.env_id} {more.env_kwargs} to demos "
                             f"of {self.env_id} {self.env_kwargs}")
        frames = [d.grounding_frames for d in (self, more) if d.grounding_frames is not None]
        joined = frames[0] if len(frames) == 1 else (
            _concatenate(*frames) if frames else None)
        return dataclasses.replace(_concatenate(self, more), grounding_frames=joined)

    def save(self, path: str | Path) -> Path:
        """The transitions (not the grounding frames) in one compressed ``.npz``; ``load``
        reads it back. For training runs to keep what they recorded themselves."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in _ROW_FIELDS
                  if getattr(self, name) is not None}
        for name in _TEXT_FIELDS:  # fixed-width text: loading needs no pickle
            if name in arrays:
                arrays[name] = arrays[name].astype(str)
        arrays.update({f"view_{key}": images for key, images in self.views.items()})
        meta = {"env_id": self.env_id, "env_kwargs": self.env_kwargs,
                "contract": self.contract.name}
        with path.open("wb") as handle:
            np.savez_compressed(handle, meta=np.array(json.dumps(meta, default=list)),
                                **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Demos:
        """Demos written by ``save``."""
        from vla_gym.policies.configuration import ACTION_CONTRACTS

        try:
            with np.load(path, allow_pickle=False) as stored:
                meta = json.loads(str(stored["meta"]))
                arrays = {name: stored[name] for name in stored.files
                          if name != "meta" and not name.startswith("view_")}
                views = {name[len("view_"):]: stored[name] for name in stored.files
                         if name.startswith("view_")}
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: not demos written by Demos.save ({exc})") from None
        for name in _TEXT_FIELDS:
            if name in arrays:
                arrays[name] = arrays[name].astype(object)
        kwargs = {key: tuple(value) if isinstance(value, list) else value
                  for key, value in meta["env_kwargs"].items()}
        return cls(meta["env_id"], kwargs, ACTION_CONTRACTS[meta["contract"]], **arrays,
                   views=views)

    @classmethod
    def from_dataset(cls, path: str | Path, only_success: bool = True) -> Demos:
        """Load a recorded dataset (``vla-gym collect``) into memory, successful episodes only
        by default (cloning a failure teaches the failure)."""
        from vla_gym.data import load_demos

        dataset = load_demos(path)
        if dataset.env_id is None:
            raise ValueError(f"{path}: the dataset does not say which env recorded it")
        contract = dataset.make_env().unwrapped.action_contract
        episodes = [_from_recorded(ep) for ep in dataset.episodes(only_success=only_success)]
        return cls.from_episodes(dataset.env_id, dataset.env_kwargs, contract, episodes)


def expert_for(env: Any, options: dict[str, Any] | None = None) -> Any:
    """``make_expert(env, **options)``; refused options close ``env`` before the error goes
    on, so a recorder that made the env for them leaks nothing."""
    from vla_gym.experts import make_expert

    try:
        return make_expert(env, **dict(options or {}))
    except ValueError:
        env.close()
        raise


def _from_recorded(episode: Any) -> dict[str, Any]:
    """A recorded episode (T actions, T + 1 observations) as ``from_episodes`` takes it."""
    steps = len(episode)
    obs, infos = episode.observations, episode.infos
    out = {IMAGE: obs[IMAGE][:steps], STATE: obs[STATE][:steps],
           INSTRUCTION: list(obs[INSTRUCTION][:steps]), "action": episode.actions}
    for key in EXTRA_VIEWS:
        if key in obs:
            out[key] = obs[key][:steps]
    for key in POSITION_LABELS:
        if key in infos:
            out[key] = np.asarray(infos[key])[:steps]
    if "target" in infos:
        out["target"] = [str(t) for t in infos["target"][:steps]]
    return out


def _kwargs_key(env_kwargs: dict[str, Any]) -> str:
    """Env kwargs compared by value: a dataset's JSON gives lists where code passes tuples."""
    return json.dumps(env_kwargs, sort_keys=True, default=list)


def learner_episodes(env_id: str, policy: Any, episodes: int, seed: int = LEARNER_SEEDS,
                     **env_kwargs: Any) -> tuple[Demos, list[bool]]:
    """DAgger's data: ``episodes`` episodes (seeds ``seed``, ``seed + 1``, ...) driven by
    ``policy`` (``act(obs)``, ``reset()``), every visited state labelled with the expert's
    action, and whether each episode succeeded. Cloned, they teach the expert's way back from
    the states the policy's own mistakes lead to, which clean and noisy demos rarely show."""
    import gymnasium as gym

    from vla_gym.experts import make_expert

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    env = gym.make(env_id, **env_kwargs)
    try:
        expert = make_expert(env)
        contract = env.unwrapped.action_contract
        recorded = [_record(env, expert, seed + j, actor=policy) for j in range(episodes)]
    finally:
        env.close()
    demos = Demos.from_episodes(env_id, env_kwargs, contract, recorded)
    return demos, [episode["success"] for episode in recorded]


def _concatenate(first: Demos, second: Demos) -> Demos:
    """``first``'s rows then ``second``'s (episodes renumbered after ``first``'s)."""
    if set(first.views) != set(second.views):
        raise ValueError(f"cannot join demos with views {sorted(first.views)} and "
                         f"{sorted(second.views)}")
    joined: dict[str, Any] = {}
    for name in ("images", "instructions", "states", "actions", "targets", *POSITION_LABELS):
        a, b = getattr(first, name), getattr(second, name)
        if (a is None) != (b is None):
            raise ValueError(f"cannot join demos where only one has {name!r}")
        joined[name] = None if a is None else np.concatenate([a, b])
    joined["episode"] = np.concatenate([first.episode, second.episode + first.episode.max() + 1])
    views = {key: np.concatenate([first.views[key], second.views[key]]) for key in first.views}
    return dataclasses.replace(first, **joined, views=views, grounding_frames=None)


def _grounding_frame(env: Any, obs: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """One observation and its position labels as a one-step episode with a NaN action (what
    ``from_episodes`` takes)."""
    frame = {key: np.asarray(obs[key])[None] for key in (IMAGE, *EXTRA_VIEWS, STATE)
             if key in obs}
    frame.update({key: np.asarray(info[key], np.float32)[None] for key in POSITION_LABELS
                  if key in info})
    action = np.full((1, env.action_space.shape[0]), np.nan, np.float32)
    return {**frame, "action": action, INSTRUCTION: obs[INSTRUCTION], "target": info["target"]}


def _instructed_resets(env: Any, seed: int, others_only: bool,
                       relational: np.random.Generator | None = None
                       ) -> Iterable[tuple[Any, Any]]:
    """Scene ``seed`` reset once per object its task could name (its own target first unless
    ``others_only``), instructed to that object: (obs, info) each. With a ``relational``
    generator, each object a spatial relation can name is reset a second time under such an
    instruction (drawn with that generator)."""
    obs, info = env.reset(seed=seed)
    others = env.unwrapped.counterfactual_targets()
    if not others_only:
        yield from _and_relational(env, seed, {}, (obs, info), relational)
    for name in others:
        try:
            reset = env.reset(seed=seed, options={"target": name})
        except ValueError:  # that object cannot be this task's target
            continue
        yield from _and_relational(env, seed, {"target": name}, reset, relational)


def _and_relational(env: Any, seed: int, options: dict[str, Any], reset: tuple[Any, Any],
                    relational: np.random.Generator | None) -> Iterable[tuple[Any, Any]]:
    """``reset``, then (with a ``relational`` generator, when a relation names the target) the
    same reset instructed by a relation."""
    yield reset
    text = None if relational is None else _relational_instruction(env, relational)
    if text is not None:
        yield env.reset(seed=seed, options={**options, "instruction": text})


def _check_relational(env: Any, relational: bool) -> None:
    from vla_gym.envs.tabletop.env import TabletopEnv

    if relational and not isinstance(env.unwrapped, TabletopEnv):
        raise ValueError(f"relational grounding needs a tabletop env (spatial relations between "
                         f"table objects), got {type(env.unwrapped).__name__}")


def _relational_instruction(env: Any, rng: np.random.Generator, tries: int = 12) -> str | None:
    """An instruction for the current episode's task and target that names the target by a
    spatial relation, drawn as the env draws instructions; None if ``tries`` draws give none
    (no relation picks the target out clearly, or the env has no such phrases)."""
    base = env.unwrapped
    task, layout = base.tasks[base.episode.family], base.sim.layout
    for _ in range(tries):
        text = task.describe(base.episode, layout, rng, base.instruction_split)
        if RELATIONAL_PHRASE.search(text):
            return text
    return None


def _other_target_frames(env: Any, seed: int) -> list[dict[str, Any]]:
    """Seed ``seed``'s first frame once per other eligible target."""
    return [_grounding_frame(env, obs, info)
            for obs, info in _instructed_resets(env, seed, others_only=True)]


def _grounding_scene_frames(env: Any, expert: Any, scenes: int, seed: int, noise: float,
                            rng: np.random.Generator, relational: bool = False
                            ) -> list[dict[str, Any]]:
    """``_approach_frames`` of ``scenes`` scenes, seeds ``GROUNDING_SEEDS + seed`` on."""
    return [frame for j in range(scenes)
            for frame in _approach_frames(env, expert, GROUNDING_SEEDS + seed + j, noise, rng,
                                          relational)]


def _approach_frames(env: Any, expert: Any, seed: int, noise: float,
                     rng: np.random.Generator, relational: bool = False
                     ) -> list[dict[str, Any]]:
    """Scene ``seed`` once per object its task could name (and once more under a relational
    instruction where one exists, if ``relational``): a frame every ``APPROACH_EVERY`` steps of
    the expert's approach to that object (with ``noise``, as in ``_record``), up to
    ``APPROACH_STEPS`` steps, so the grounding losses see the scene from the poses a policy
    passes through (the wrist camera's view changes the most)."""
    frames = []
    contract = env.unwrapped.action_contract
    for obs, info in _instructed_resets(env, seed, others_only=False,
                                        relational=rng if relational else None):
        expert.reset()
        for step in range(APPROACH_STEPS + 1):
            if step % APPROACH_EVERY == 0:
                frames.append(_grounding_frame(env, obs, info))
            action = _with_noise(expert.act(obs), contract, noise, rng)
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
    return frames


def _with_noise(action: np.ndarray, contract: ActionContract, noise: float,
                rng: np.random.Generator | None) -> np.ndarray:
    """``action`` plus Gaussian noise of std ``noise`` on the motion dimensions (the gripper
    stays clean), clipped to the contract's range."""
    if noise <= 0 or rng is None:
        return action
    motion = np.array([name != "grip" for name in contract.dims])
    executed = np.array(action, dtype=np.float32, copy=True)
    executed[motion] += noise * rng.standard_normal(int(motion.sum()))
    return np.clip(executed, contract.low, contract.high)


def _grip_index(contract: ActionContract, needed_by: str) -> int:
    """Where ``contract``'s action holds the gripper command; ``needed_by`` names the caller
    in the error for robots without one."""
    if contract.grip_index is None:
        raise ValueError(f"{needed_by} need an action with a 'grip' dimension; "
                         f"{contract.name!r} has {contract.dims}")
    return contract.grip_index


class _GraspKnock:
    """Replaces the executed action for ``KNOCK_STEPS`` steps from the first step the expert
    starts closing the gripper (its grip going from open to closed): the gripper stays open
    and moves off the grasp point. ``__call__`` returns the action to execute, or None while
    the expert's action is followed."""

    def __init__(self, contract: ActionContract, rng: np.random.Generator) -> None:
        self.grip = _grip_index(contract, "grasp misses")
        azimuth, rise = rng.uniform(0, 2 * np.pi), rng.uniform(0, KNOCK_MAX_RISE)
        direction = np.array([np.cos(azimuth) * np.cos(rise), np.sin(azimuth) * np.cos(rise),
                              np.sin(rise)])
        per_step = rng.uniform(*KNOCK_DISTANCE) / KNOCK_STEPS / np.asarray(contract.scale[:3])
        self.push = direction * per_step
        self.left = KNOCK_STEPS
        self.started = False
        self.last_grip: float | None = None

    def __call__(self, expert_action: np.ndarray) -> np.ndarray | None:
        grip = float(expert_action[self.grip])
        if not self.started and self.last_grip is not None and self.last_grip < 0 < grip:
            self.started = True
        self.last_grip = grip
        if not self.started or self.left == 0:
            return None
        self.left -= 1
        knocked = np.zeros_like(expert_action, dtype=np.float32)
        knocked[:3] = np.clip(self.push, -1.0, 1.0)
        knocked[self.grip] = -1.0  # open
        return knocked


class _GripBlips:
    """Closes the executed gripper for ``BLIP_STEPS`` steps at a time, starting with chance
    ``rate`` on each step where the expert holds it open (``grip`` < 0); a blip ends early
    once the expert itself closes. ``__call__`` returns the action to execute."""

    def __init__(self, contract: ActionContract, rate: float, rng: np.random.Generator) -> None:
        self.grip = _grip_index(contract, "gripper blips")
        self.rate, self.rng = rate, rng
        self.left = 0

    def __call__(self, expert_action: np.ndarray, executed: np.ndarray) -> np.ndarray:
        if expert_action[self.grip] >= 0:  # the expert closes: nothing to perturb
            self.left = 0
            return executed
        if self.left == 0 and self.rng.random() < self.rate:
            self.left = int(self.rng.integers(*BLIP_STEPS))
        if self.left == 0:
            return executed
        self.left -= 1
        blipped = np.array(executed, dtype=np.float32, copy=True)
        blipped[self.grip] = 1.0
        return blipped


def _record(env: Any, expert: Any, seed: int, noise: float = 0.0,
            rng: np.random.Generator | None = None, knock: bool = False,
            blips: float = 0.0, actor: Any = None) -> dict[str, Any]:
    """One expert episode. With ``noise`` > 0 the env executes the expert's action plus
    Gaussian noise on the motion dimensions (DART) while the recorded label stays the clean
    action: the demos then show how to recover from drift like a learned policy's. ``knock``:
    the first grasp is also knocked off target (``_GraspKnock``; needs ``rng``). ``blips`` > 0:
    the executed gripper also closes now and then while the expert's is open (``_GripBlips``;
    needs ``rng``). ``actor`` (``act(obs)``, ``reset()``): the env executes its actions
    instead, and the expert only labels the states it visits (DAgger); no noise, knocks or
    blips are applied then."""
    obs, info = env.reset(seed=seed)
    expert.reset()
    if actor is not None:
        actor.reset()
        noise, knock, blips = 0.0, False, 0.0
    contract = env.unwrapped.action_contract
    knocker = _GraspKnock(contract, rng) if knock and rng is not None else None
    blipper = _GripBlips(contract, blips, rng) if blips > 0 and rng is not None else None
    views = [key for key in (IMAGE, *EXTRA_VIEWS) if key in obs]
    labels = [key for key in POSITION_LABELS if key in info]
    steps: dict[str, list] = {**{key: [] for key in views}, STATE: [], "action": [],
                              **{key: [] for key in labels}}
    done = False
    while not done:
        action = expert.act(obs)
        knocked = knocker(action) if knocker is not None else None
        if knocked is None:
            for key in (*views, STATE):
                steps[key].append(obs[key])
            steps["action"].append(action)
            for key in labels:
                steps[key].append(info[key])
        if actor is not None:
            executed = actor.act(obs)
        elif knocked is None:
            executed = _with_noise(action, contract, noise, rng)
        else:
            executed = knocked
        if blipper is not None and knocked is None:
            executed = blipper(action, executed)
        obs, _, terminated, truncated, info = env.step(executed)
        done = terminated or truncated
    return {**{k: np.asarray(v) for k, v in steps.items()}, INSTRUCTION: obs[INSTRUCTION],
            "target": info["target"], "success": bool(info["is_success"])}
