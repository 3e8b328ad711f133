"""Preference queries from policy rollouts, and a synthetic labeller that answers them.

The path from behaviour to labels, in order:

1. :func:`collect_segments` rolls out one or more *variants* (a policy plus action noise) from
   the same seeded scenes and cuts every episode into fixed-length segments. Variants of one
   seed share scene and instruction, so their segments can be compared fairly.
2. :func:`random_pairs` / :func:`disagreement_pairs` pick which two segments (same instruction)
   to ask about: at random, or where a reward-model ensemble disagrees most (active learning).
3. :func:`write_query_set` writes a query directory: the manifest (``query_files``), one MP4 per
   segment for people, and ``segments.npz`` (this module) for the reward model.
4. :class:`Oracle` answers queries from the true reward (Christiano et al. 2017's synthetic
   labeller: noisy, with ties) into a :class:`~vla_gym.training.label_store.LabelStore` under
   the labeller name ``"oracle"``, so oracle and human labels reach the reward model one way.

A segment's step ``t`` holds the observation *after* action ``t`` together with the reward that
action earned, so a reward model reading observations scores what the action achieved.
``true_rewards`` and ``successes`` are kept for the oracle and for evaluation only.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_gym.training.label_store import LabelStore
from vla_gym.training.query_files import (
    ClipRef,
    Query,
    QueryFileError,
    QueryManifest,
    read_manifest,
    write_manifest,
)
from vla_gym.types import IMAGE, INSTRUCTION, STATE

SEGMENTS_NAME = "segments.npz"
SEGMENTS_FORMAT = "vla_gym.segments/1"
ORACLE = "oracle"
CLIP_DIR = "clips"
# policy(obs_batch, info_batch) -> actions (B, action_dim), as the rollout runner calls it
BatchPolicy = Callable[[dict[str, Any], dict[str, Any]], np.ndarray]
Pair = tuple[int, int]
# The per-segment arrays of a SegmentSet, in segments.npz under the same names.
ARRAYS = ("images", "states", "instructions", "true_rewards", "successes", "seeds", "starts",
          "variants")


# -- segments ----------------------------------------------------------------------------------
@dataclass
class SegmentSet:
    """N segments of L steps: what the reward model reads, plus ground truth for the oracle."""

    env_id: str
    images: np.ndarray  # (N, L, H, W, 3) uint8, observation after each step
    states: np.ndarray  # (N, L, S) float32
    instructions: np.ndarray  # (N,) str
    true_rewards: np.ndarray  # (N, L) float32: the env's reward (oracle / evaluation only)
    successes: np.ndarray  # (N, L) bool: the env's is_success after each step
    seeds: np.ndarray  # (N,) int: the episode's reset seed
    starts: np.ndarray  # (N,) int: first step of the segment within its episode
    variants: np.ndarray  # (N,) str: which policy variant acted
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        for name in ARRAYS:
            if len(getattr(self, name)) != n:
                raise ValueError(f"SegmentSet.{name} has {len(getattr(self, name))} rows, "
                                 f"images has {n}")
        if self.images.dtype != np.uint8 or self.images.ndim != 5:
            raise ValueError(f"SegmentSet.images must be uint8 (N, L, H, W, 3), got "
                             f"{self.images.dtype} {self.images.shape}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def segment_length(self) -> int:
        return int(self.images.shape[1])

    @property
    def state_dim(self) -> int:
        return int(self.states.shape[2])

    @property
    def true_returns(self) -> np.ndarray:
        return self.true_rewards.sum(axis=1)

    def batch(self, index: np.ndarray) -> dict[str, Any]:
        """Observations of segments ``index`` flattened to (len(index) * L) steps."""
        index = np.asarray(index)
        steps = self.segment_length
        return {IMAGE: self.images[index].reshape(-1, *self.images.shape[2:]),
                STATE: self.states[index].reshape(-1, self.state_dim),
                INSTRUCTION: [str(t) for t in np.repeat(self.instructions[index], steps)]}

    def save(self, path: str | Path) -> Path:
        """Write ``path`` atomically (strings as fixed-width unicode: no pickles on disk)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {name: np.asarray(getattr(self, name)) for name in ARRAYS}
        for name in ("instructions", "variants"):
            arrays[name] = arrays[name].astype(str)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, format=np.array(SEGMENTS_FORMAT), env_id=np.array(self.env_id),
                 env_kwargs=np.array(json.dumps(self.env_kwargs)), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, env_id: str | None = None) -> SegmentSet:
        """Read ``segments.npz``; a file for another env or of another format raises."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise QueryFileError(f"{path} does not exist: the query set has no segments") from None
        except (OSError, ValueError) as exc:
            raise QueryFileError(f"cannot read {path} as a segments file: {exc}") from None
        found = str(arrays.pop("format", ""))
        if found != SEGMENTS_FORMAT:
            raise QueryFileError(f"{path}: expected format {SEGMENTS_FORMAT!r}, found {found!r}")
        missing = sorted({"env_id", "env_kwargs", *ARRAYS} - set(arrays))
        if missing:
            raise QueryFileError(f"{path}: missing arrays {missing}")
        stored_env = str(arrays["env_id"])
        if env_id is not None and stored_env != env_id:
            raise QueryFileError(f"{path} holds segments of env {stored_env!r}, not {env_id!r}")
        try:
            return cls(env_id=stored_env, env_kwargs=json.loads(str(arrays["env_kwargs"])),
                       **{name: arrays[name] for name in ARRAYS})
        except ValueError as exc:
            raise QueryFileError(f"{path}: {exc}") from None


def concatenate(sets: Sequence[SegmentSet]) -> SegmentSet:
    """One set holding the rows of ``sets`` in order (all from the same env)."""
    envs = {s.env_id for s in sets}
    if len(envs) != 1:
        raise ValueError(f"cannot join segments of different envs: {sorted(envs)}")
    joined = {n: np.concatenate([getattr(s, n) for s in sets]) for n in ARRAYS}
    return SegmentSet(env_id=sets[0].env_id, env_kwargs=sets[0].env_kwargs, **joined)


# -- rollouts -> segments ----------------------------------------------------------------------
@dataclass
class Variant:
    """One way of acting: a batch policy plus Gaussian action noise of std ``noise``."""

    name: str
    policy: BatchPolicy
    noise: float = 0.0


@dataclass
class _Track:
    """What one sub-env has recorded in its current episode."""

    seed: int
    variant: int
    images: list[np.ndarray] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    instruction: str = ""
    done: bool = False


def collect_segments(
    env_id: str,
    variants: Sequence[Variant],
    seeds: Iterable[int],
    *,
    segment_length: int = 25,
    env_kwargs: dict[str, Any] | None = None,
    num_envs: int = 6,
    noise_seed: int = 0,
    clip_frames: bool = False,
    wrappers: Sequence[Callable[[Any], Any]] | None = None,
) -> tuple[SegmentSet, list[np.ndarray] | None]:
    """Roll every variant out from every seed; cut each episode into full segments.

    Returns the segments and, with ``clip_frames``, each segment's rendered frames (for clips
    people watch; ``render_size`` in ``env_kwargs`` sets their size). ``wrappers`` wrap each
    sub-env (e.g. ``ExpertActions`` for a variant reading ``info["expert_action"]``).
    """
    if not variants:
        raise ValueError("collect_segments needs at least one variant")
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}")
    jobs = [(int(s), v) for s in seeds for v in range(len(variants))]
    kwargs = dict(env_kwargs or {})
    if clip_frames:
        kwargs["render_mode"] = "rgb_array"
    rng = np.random.default_rng(noise_seed)
    tracks: list[_Track] = []
    for start in range(0, len(jobs), num_envs):
        tracks += _run_jobs(env_id, variants, jobs[start:start + num_envs], kwargs, rng,
                            clip_frames, wrappers)
    kwargs.pop("render_mode", None)
    return _cut(env_id, kwargs, tracks, variants, segment_length, clip_frames)


def _run_jobs(env_id: str, variants: Sequence[Variant], jobs: list[tuple[int, int]],
              kwargs: dict[str, Any], rng: np.random.Generator, frames: bool,
              wrappers: Sequence[Callable[[Any], Any]] | None) -> list[_Track]:
    from gymnasium.vector import AutoresetMode

    from vla_gym.vector import make_vec

    vec: Any = make_vec(env_id, num_envs=len(jobs), vector_kwargs={
        "autoreset_mode": AutoresetMode.DISABLED}, wrappers=wrappers, **kwargs)
    tracks = [_Track(seed, variant) for seed, variant in jobs]
    for variant in variants:  # new episodes: a policy holding per-episode state starts afresh
        reset = getattr(variant.policy, "reset", None)
        if callable(reset):
            reset()
    try:
        obs, info = vec.reset(seed=[seed for seed, _ in jobs])
        while not all(t.done for t in tracks):
            actions = _act(variants, tracks, obs, info, rng, vec.single_action_space)
            obs, reward, terminated, truncated, info = vec.step(actions)
            rendered = vec.call("render") if frames else None
            _record(tracks, obs, reward, info, np.logical_or(terminated, truncated), rendered)
    finally:
        vec.close()
    return tracks


def _act(variants: Sequence[Variant], tracks: list[_Track], obs: dict[str, Any],
         info: dict[str, Any], rng: np.random.Generator, space: Any) -> np.ndarray:
    """Each sub-env's action from its variant (variants sharing a policy share one call)."""
    actions = np.zeros((len(tracks), *space.shape), np.float32)
    groups: dict[int, list[int]] = defaultdict(list)
    for row, track in enumerate(tracks):
        groups[id(variants[track.variant].policy)].append(row)
    for rows in groups.values():
        policy = variants[tracks[rows[0]].variant].policy
        actions[rows] = policy(_rows(obs, rows), _rows(info, rows))
    noise = np.array([variants[t.variant].noise for t in tracks], np.float32)
    actions += noise[:, None] * rng.standard_normal(actions.shape, dtype=np.float32)
    return np.clip(actions, space.low, space.high)


def _rows(batch: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    """The sub-envs ``rows`` of a vector env's observation or info dict."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, (tuple, list)):
            out[key] = tuple(value[i] for i in rows)
        elif isinstance(value, np.ndarray) and value.ndim >= 1:
            out[key] = value[rows]
        else:
            out[key] = value
    return out


def _record(tracks: list[_Track], obs: dict[str, Any], reward: np.ndarray,
            info: dict[str, Any], ended: np.ndarray, rendered: Any) -> None:
    success = np.asarray(info.get("is_success", np.zeros(len(tracks), bool)))
    for i, track in enumerate(tracks):
        if track.done:
            continue
        track.images.append(np.asarray(obs[IMAGE][i]))
        track.states.append(np.asarray(obs[STATE][i], np.float32))
        track.rewards.append(float(reward[i]))
        track.successes.append(bool(success[i]))
        track.instruction = str(obs[INSTRUCTION][i])
        if rendered is not None:
            track.frames.append(np.asarray(rendered[i]))
        track.done = bool(ended[i])


def _cut(env_id: str, kwargs: dict[str, Any], tracks: list[_Track],
         variants: Sequence[Variant], length: int, frames: bool,
         ) -> tuple[SegmentSet, list[np.ndarray] | None]:
    rows: dict[str, list] = defaultdict(list)
    clips: list[np.ndarray] = []
    for track in tracks:
        for start in range(0, len(track.rewards) - length + 1, length):
            window = slice(start, start + length)
            rows["images"].append(np.stack(track.images[window]))
            rows["states"].append(np.stack(track.states[window]))
            rows["true_rewards"].append(np.asarray(track.rewards[window], np.float32))
            rows["successes"].append(np.asarray(track.successes[window], bool))
            rows["instructions"].append(track.instruction)
            rows["seeds"].append(track.seed)
            rows["starts"].append(start)
            rows["variants"].append(variants[track.variant].name)
            if frames:
                clips.append(np.stack(track.frames[window]))
    if not rows["images"]:
        raise ValueError(f"no episode lasted {length} steps; use a shorter segment_length or "
                         "terminate_on_success=False")
    arrays = {k: np.asarray(v) if k not in ("instructions", "variants") else np.array(v, str)
              for k, v in rows.items()}
    return SegmentSet(env_id=env_id, env_kwargs=kwargs, **arrays), (clips if frames else None)


# -- which pairs to ask about ------------------------------------------------------------------
def _groups(segments: SegmentSet) -> list[np.ndarray]:
    """Rows sharing an instruction, for groups with at least two segments."""
    by_text: dict[str, list[int]] = defaultdict(list)
    for row, text in enumerate(segments.instructions):
        by_text[str(text)].append(row)
    return [np.asarray(rows) for rows in by_text.values() if len(rows) > 1]


def random_pairs(segments: SegmentSet, count: int, rng: np.random.Generator,
                 exclude: Iterable[Pair] = ()) -> list[Pair]:
    """Up to ``count`` distinct pairs of segments with the same instruction, drawn uniformly."""
    groups = _groups(segments)
    if not groups:
        raise ValueError("no two segments share an instruction; roll out several variants "
                         "per seed so pairs can be formed")
    weights = np.array([len(g) * (len(g) - 1) for g in groups], float)
    capacity = int(weights.sum() // 2)
    taken = {tuple(sorted(p)) for p in exclude}
    wanted = min(count, capacity - len(taken))
    pairs: list[Pair] = []
    for _ in range(50 * count):
        if len(pairs) >= wanted:
            break
        group = groups[int(rng.choice(len(groups), p=weights / weights.sum()))]
        a, b = (int(x) for x in rng.choice(group, size=2, replace=False))
        key = (min(a, b), max(a, b))
        if key not in taken:
            taken.add(key)
            pairs.append((a, b))
    return pairs


def disagreement_pairs(segments: SegmentSet, count: int, rng: np.random.Generator,
                       member_returns: np.ndarray, pool_factor: int = 10,
                       exclude: Iterable[Pair] = ()) -> list[Pair]:
    """The ``count`` pairs, out of ``pool_factor * count`` random candidates, on which the
    ensemble members' Bradley-Terry probabilities vary most (Christiano et al. 2017).

    ``member_returns``: (K, N) each member's predicted return of every segment.
    """
    returns = np.asarray(member_returns, np.float64)
    if returns.ndim != 2 or returns.shape[1] != len(segments) or returns.shape[0] < 2:
        raise ValueError(f"member_returns must be (K >= 2 members, {len(segments)} segments), "
                         f"got {returns.shape}")
    pool = random_pairs(segments, pool_factor * count, rng, exclude)
    if not pool:
        return []
    left, right = np.array(pool).T
    probs = 1.0 / (1.0 + np.exp(-(returns[:, left] - returns[:, right])))
    order = np.argsort(-probs.var(axis=0), kind="stable")
    return [pool[i] for i in order[:count]]


# -- query directories -------------------------------------------------------------------------
def clip_name(segment: int) -> str:
    return f"{CLIP_DIR}/segment_{segment:05d}.mp4"


def write_query_set(
    directory: str | Path,
    segments: SegmentSet,
    pairs: Sequence[Pair],
    *,
    frames: Sequence[np.ndarray] | None = None,
    tag: str = "q",
    meta: dict[str, Any] | None = None,
) -> QueryManifest:
    """Write ``segments.npz``, one clip per queried segment (when ``frames`` are given) and the
    manifest. Query ids are ``{tag}-{k:05d}``: give each set of one label store its own tag."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    segments.save(directory / SEGMENTS_NAME)
    used = sorted({i for pair in pairs for i in pair})
    if frames is not None:
        _write_clips(directory, segments, frames, used)
    queries = [Query(id=f"{tag}-{k:05d}", instruction=str(segments.instructions[a]),
                     left=ClipRef(a, clip_name(a)), right=ClipRef(b, clip_name(b)))
               for k, (a, b) in enumerate(pairs)]
    manifest = QueryManifest(env_id=segments.env_id, segment_length=segments.segment_length,
                             queries=queries, meta={"clips": frames is not None,
                                                    **dict(meta or {})})
    write_manifest(directory, manifest)
    return manifest


def _write_clips(directory: Path, segments: SegmentSet, frames: Sequence[np.ndarray],
                 used: Iterable[int]) -> None:
    from vla_gym.video import VideoRecorder

    if len(frames) != len(segments):
        raise ValueError(f"got frames for {len(frames)} segments, the set has {len(segments)}")
    for row in used:
        video = VideoRecorder(directory / clip_name(row), fps=10)
        for frame in frames[row]:
            video.add(frame, str(segments.instructions[row]))
        video.close()


@dataclass
class QuerySet:
    directory: Path
    manifest: QueryManifest
    segments: SegmentSet


def read_query_set(directory: str | Path, env_id: str | None = None,
                   check_clips: bool | None = None) -> QuerySet:
    """Manifest + segments of a query directory, checked against each other and ``env_id``.

    ``check_clips``: None checks clips when the manifest says they were written."""
    directory = Path(directory)
    manifest = read_manifest(directory, env_id=env_id, check_clips=False)
    if check_clips is None:
        check_clips = bool(manifest.meta.get("clips", True))
    if check_clips:
        read_manifest(directory, env_id=env_id, check_clips=True)
    segments = SegmentSet.load(directory / SEGMENTS_NAME, env_id=manifest.env_id)
    _check_agrees(directory, manifest, segments)
    return QuerySet(directory, manifest, segments)


def _check_agrees(directory: Path, manifest: QueryManifest, segments: SegmentSet) -> None:
    where = directory / SEGMENTS_NAME
    if segments.segment_length != manifest.segment_length:
        raise QueryFileError(f"{where} holds segments of {segments.segment_length} steps but "
                             f"the manifest says {manifest.segment_length}")
    for query in manifest.queries:
        for ref in (query.left, query.right):
            if ref.segment >= len(segments):
                raise QueryFileError(f"query {query.id!r} names segment {ref.segment} but "
                                     f"{where} has {len(segments)} segments")


def check_matches_env(query_set: QuerySet, env_id: str, env_kwargs: dict[str, Any]) -> None:
    """Refuse a query set whose observations cannot come from ``env_id`` as configured."""
    import gymnasium as gym

    if query_set.manifest.env_id != env_id:
        raise QueryFileError(f"{query_set.directory} holds queries for env "
                             f"{query_set.manifest.env_id!r}, not {env_id!r}")
    env = gym.make(env_id, **{**env_kwargs, "obs_mode": "rgb"})
    try:
        spaces: Any = env.observation_space
        expected = {IMAGE: spaces[IMAGE].shape, STATE: spaces[STATE].shape}
    finally:
        env.close()
    found = {IMAGE: query_set.segments.images.shape[2:],
             STATE: query_set.segments.states.shape[2:]}
    for key, shape in expected.items():
        if tuple(found[key]) != tuple(shape):
            raise QueryFileError(f"{query_set.directory}: segments hold '{key}' of shape "
                                 f"{tuple(found[key])} per step but {env_id} with "
                                 f"{env_kwargs} gives {tuple(shape)}")


# -- the synthetic labeller --------------------------------------------------------------------
@dataclass(frozen=True)
class OracleConfig:
    """A synthetic labeller preferring the segment with more true reward.

    ``measure``: ``"return"`` (sum of the env's reward over the segment) or ``"progress"`` (the
    reward of the last step minus that of the first: how far the segment moved the task).
    Thresholds and temperature are per step, so they mean the same at any segment length.
    ``flip``: probability of answering the opposite (a labeller's mistakes);
    ``temperature``: 0 = always the better segment, > 0 = Boltzmann-rational choice;
    ``tie_threshold``: below this difference the answer is ``"equal"``.
    """

    measure: str = "return"
    flip: float = 0.0
    temperature: float = 0.0
    tie_threshold: float = 0.001
    seed: int = 0

    def __post_init__(self) -> None:
        if self.measure not in ("return", "progress"):
            raise ValueError(f"OracleConfig.measure must be 'return' or 'progress', got "
                             f"{self.measure!r}")
        if not 0.0 <= self.flip <= 0.5:
            raise ValueError(f"OracleConfig.flip must be in [0, 0.5], got {self.flip}")
        if self.temperature < 0 or self.tie_threshold < 0:
            raise ValueError("OracleConfig.temperature and tie_threshold must be >= 0")


class Oracle:
    """Answers queries from the true reward; seeded, so the same queries get the same labels."""

    def __init__(self, config: OracleConfig | None = None) -> None:
        self.config = config or OracleConfig()
        self.rng = np.random.default_rng(self.config.seed)

    def value(self, segments: SegmentSet, row: int) -> float:
        rewards = segments.true_rewards[row]
        if self.config.measure == "progress":
            return float(rewards[-1] - rewards[0])
        return float(rewards.sum())

    def choose(self, left: float, right: float, steps: int) -> str:
        """``"left"``, ``"right"`` or ``"equal"`` for two segments' values."""
        cfg = self.config
        gap = (left - right) / steps
        if abs(gap) < cfg.tie_threshold:
            return "equal"
        if cfg.temperature > 0:
            p_left = 1.0 / (1.0 + math.exp(-gap / cfg.temperature))
            choice = "left" if self.rng.random() < p_left else "right"
        else:
            choice = "left" if gap > 0 else "right"
        if self.rng.random() < cfg.flip:
            choice = "right" if choice == "left" else "left"
        return choice

    def label(self, query_set: QuerySet, store: LabelStore, limit: int | None = None) -> int:
        """Label the set's queries the oracle has not labelled yet (at most ``limit``)."""
        done = store.labelled_ids(ORACLE)
        segments, steps = query_set.segments, query_set.segments.segment_length
        added = 0
        for query in query_set.manifest.queries:
            if query.id in done or (limit is not None and added >= limit):
                continue
            choice = self.choose(self.value(segments, query.left.segment),
                                 self.value(segments, query.right.segment), steps)
            store.add(query.id, choice, ORACLE)
            added += 1
        return added


@dataclass
class Preferences:
    """Labelled pairs of one segment set: what the reward model trains on."""

    segments: SegmentSet
    left: np.ndarray  # (P,) segment rows
    right: np.ndarray  # (P,)
    p_left: np.ndarray  # (P,) probability the left segment is preferred

    def __len__(self) -> int:
        return len(self.p_left)


def load_preferences(sources: Sequence[tuple[str | Path, str | Path]],
                     env_id: str | None = None) -> Preferences:
    """Labelled queries of one or more (query directory, label database) pairs, joined."""
    if not sources:
        raise ValueError("no query sets given")
    sets, lefts, rights, probs, offset = [], [], [], [], 0
    for directory, db in sources:
        query_set = read_query_set(directory, env_id=env_id, check_clips=False)
        with LabelStore(db) as store:
            prefs = store.preferences()
        for query in query_set.manifest.queries:
            if query.id in prefs:
                lefts.append(offset + query.left.segment)
                rights.append(offset + query.right.segment)
                probs.append(prefs[query.id])
        sets.append(query_set.segments)
        env_id = query_set.manifest.env_id
        offset += len(query_set.segments)
    if not probs:
        raise ValueError(f"none of the queries in {[str(d) for d, _ in sources]} has a label "
                         "(skips do not count)")
    return Preferences(concatenate(sets), np.array(lefts), np.array(rights),
                       np.array(probs, np.float32))
