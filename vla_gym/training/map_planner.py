"""Demos and training for ``MapPlannerPolicy``: the navigation policy that maps, plans and
drives (``vla_gym.policies.map_planner``).

``MapDemos.from_expert`` records expert episodes with the overhead view and, per frame, the
labels perception learns from: the base's world pose and the target's position; per episode,
the occupancy grid the env plans on. Grounding-only scenes add first frames instructed to
other landmarks (their actions are never cloned). ``train_map_planner`` then fits, within one
time budget, perception on every frame (the maps' losses) and then the controller on the
demos' frames: its inputs the planner's features from the simulator's map, pose and target
(the expert's own view; ``head_features="perceived"`` computes them from what the trained
perception sees instead), its labels the expert's actions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vla_gym.policies.map_planner import (
    TOP_VIEW,
    EpisodeMemory,
    MapPlannerConfig,
    MapPlannerPolicy,
    Perceived,
    camera_calibration,
    route_features,
    words,
)
from vla_gym.training.demos import GROUNDING_SEEDS

TRAIN_SEEDS = 0


@dataclass
class MapDemos:
    """Flat per-frame arrays; ``blocked`` per episode (``episode`` indexes it)."""

    env_id: str
    env_kwargs: dict[str, Any]
    camera: dict[str, Any]
    images: np.ndarray  # (N, H, W, 3) uint8 overhead views
    instructions: list[str]
    states: np.ndarray  # (N, D) float32
    actions: np.ndarray  # (N, 2) float32; NaN on grounding-only frames
    episode: np.ndarray  # (N,) int
    poses: np.ndarray  # (N, 3) base world x, y, yaw
    targets: np.ndarray  # (N, 2) the instructed landmark's world x, y
    blocked: np.ndarray  # (episodes, n, n) bool
    arena: tuple[float, float] = (2.5, 0.1)  # half size (m), resolution (m per cell)
    goal_radius: float = 0.6  # m: the expert's plan aimed this close to the target

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def demo_rows(self) -> np.ndarray:
        """Rows with an expert action to clone."""
        return np.flatnonzero(np.isfinite(self.actions).all(1))

    @classmethod
    def from_expert(cls, env_id: str, episodes: int, seed: int = TRAIN_SEEDS,
                    noise: float = 0.3, noisy_fraction: float = 0.75,
                    grounding_scenes: int = 0, expert_options: dict[str, Any] | None = None,
                    **env_kwargs: Any) -> MapDemos:
        """``episodes`` expert episodes (episode j from seed + j; DART noise of std ``noise``
        executed in ``noisy_fraction`` of them, the clean action recorded) and the first
        frames of ``grounding_scenes`` further scenes (seeds ``GROUNDING_SEEDS + seed + j``),
        one per reachable landmark, instructed to it: the same image under several
        instructions is what teaches the target map to read the instruction.
        ``expert_options`` go to ``make_expert`` (e.g. ``{"stop_distance": 0.55}``)."""
        import gymnasium as gym

        from vla_gym.training.demos import _with_noise, expert_for

        if episodes < 1 or grounding_scenes < 0 or noise < 0:
            raise ValueError(f"need episodes >= 1, grounding_scenes >= 0 and noise >= 0; got "
                             f"{episodes}, {grounding_scenes}, {noise}")
        env_kwargs = {"cameras": ("main", "top"), **env_kwargs}
        needs = (f"MapDemos needs a navigation env with the overhead camera (cameras "
                 f"including 'top'); {env_id} with {env_kwargs}")
        try:
            env = gym.make(env_id, **env_kwargs)
        except ValueError as exc:  # e.g. a tabletop env, which has no 'top' camera
            raise ValueError(f"{needs}: {exc}") from None
        base = env.unwrapped
        if not hasattr(base, "grid") or "top" not in getattr(base, "cameras", ()):
            env.close()
            raise ValueError(f"{needs} is not one")
        expert = expert_for(env, expert_options)
        rng = np.random.default_rng(seed)
        rows: dict[str, list] = {k: [] for k in ("images", "instructions", "states", "actions",
                                                 "episode", "poses", "targets")}
        blocked = []

        def keep(obs: dict[str, Any], action: np.ndarray, number: int) -> None:
            rows["images"].append(obs[TOP_VIEW])
            rows["instructions"].append(obs["instruction"])
            rows["states"].append(obs["state"])
            rows["actions"].append(action)
            rows["episode"].append(number)
            rows["poses"].append(base.sim.robot.world_pose(base.data))
            rows["targets"].append(base.episode.target.xy)

        try:
            base.reset(seed=seed)  # the camera's calibration, read once the model has moved
            camera = camera_calibration(base.model, base.data, "top")
            for j in range(episodes):
                obs, _ = env.reset(seed=seed + j)
                expert.reset()
                blocked.append(base.grid.blocked.copy())
                scale = noise if rng.random() < noisy_fraction else 0.0
                done = False
                while not done:
                    action = expert.act(obs)
                    keep(obs, action, j)
                    executed = _with_noise(action, base.action_contract, scale, rng)
                    obs, _, terminated, truncated, _ = env.step(executed)
                    done = terminated or truncated
            for j in range(grounding_scenes):
                scene = GROUNDING_SEEDS + seed + j
                env.reset(seed=scene)
                blocked.append(base.grid.blocked.copy())
                for name in [o.name for o in base.world.landmarks]:
                    try:
                        obs, _ = env.reset(seed=scene, options={"target": name})
                    except ValueError:  # that landmark cannot be reached in this world
                        continue
                    keep(obs, np.full(2, np.nan, np.float32), len(blocked) - 1)
        finally:
            env.close()
        grid = base.grid
        return cls(env_id, env_kwargs, camera, np.asarray(rows["images"], np.uint8),
                   rows["instructions"], np.asarray(rows["states"], np.float32),
                   np.asarray(rows["actions"], np.float32), np.asarray(rows["episode"]),
                   np.asarray(rows["poses"], np.float32), np.asarray(rows["targets"], np.float32),
                   np.asarray(blocked), (-float(grid.origin), float(grid.resolution)),
                   float(expert.goal_radius))


HEAD_FEATURES = ("true", "perceived")


@dataclass
class MapPlannerTraining:
    """Budget and settings of ``train_map_planner``."""

    time_budget: float = 860.0  # s for both stages together
    head_seconds: float = 70.0  # of the budget kept for the head stage (features + fit)
    head_frame_stride: int = 3  # the head fits every this-many-th demo frame (neighbours
    # nearly repeat each other, and each frame's features cost a plan)
    # What the controller is cloned on: "true", the simulator's map, pose and target for each
    # demo frame (the expert's own view: a controller that drives as the expert would behind
    # right perception), or "perceived", what the trained perception makes of the frames
    # (its episode memory included; costs a perception pass over every demo frame).
    head_features: str = "true"
    grounding_share: float = 0.5  # of each perception batch drawn from grounding frames
    # The occupancy's per-cell loss starts near 0.7 against ~7.8 for each map over 2 500
    # cells, and learns slowest; the planner needs it most.
    blocked_weight: float = 3.0
    batch_size: int = 32
    lr: float = 2e-3
    head_steps: int = 5000
    head_batch_size: int = 256
    head_lr: float = 1e-3
    brightness: float = 0.1  # +- fraction: augmentation of the overhead image
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head_features not in HEAD_FEATURES:
            raise ValueError(f"head_features must be one of {HEAD_FEATURES}, got "
                             f"{self.head_features!r}")


def config_for(demos: MapDemos, **changes: Any) -> MapPlannerConfig:
    """A config whose vocabulary is the demos' instructions' words, whose camera and planning
    grid are the demos' env's, and whose planner aims where the demos' expert aimed."""
    vocabulary = sorted({w for text in set(demos.instructions) for w in words(text)})
    half, resolution = demos.arena
    changes = {"goal_radius": demos.goal_radius, **changes}
    return MapPlannerConfig(vocabulary=vocabulary, camera=demos.camera, arena_half=half,
                            resolution=resolution, **changes)


def cell_index(xy: np.ndarray, config: MapPlannerConfig) -> np.ndarray:
    """Flat index of the planning cell holding each world (x, y) (rows along y)."""
    n = config.cells
    col = np.clip(((xy[..., 0] + config.arena_half) / config.resolution).astype(int), 0, n - 1)
    row = np.clip(((xy[..., 1] + config.arena_half) / config.resolution).astype(int), 0, n - 1)
    return row * n + col


def perception_labels(demos: MapDemos, config: MapPlannerConfig) -> dict[str, torch.Tensor]:
    """Per frame: the cells of the base, of the point ``config.nose`` ahead of it and of the
    target (class indices); per episode the occupancy."""
    poses = demos.poses.astype(np.float64)
    ahead = poses[:, :2] + config.nose * np.stack([np.cos(poses[:, 2]),
                                                   np.sin(poses[:, 2])], -1)
    return {"base": torch.as_tensor(cell_index(poses[:, :2], config)),
            "nose": torch.as_tensor(cell_index(ahead, config)),
            "target": torch.as_tensor(cell_index(demos.targets, config)),
            "blocked": torch.as_tensor(demos.blocked)}


def perception_loss(policy: MapPlannerPolicy, demos: MapDemos, labels: dict[str, torch.Tensor],
                    rows: np.ndarray, rng: np.random.Generator, brightness: float,
                    blocked_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The maps' losses on ``rows``: cross-entropy over cells for the base, nose and target
    maps, per-cell binary cross-entropy for the occupancy; the total weighs the occupancy by
    ``blocked_weight``."""
    warped = policy.warp(torch.as_tensor(demos.images[rows]))
    if brightness > 0:
        gain = rng.uniform(1 - brightness, 1 + brightness, (len(rows), 1, 1, 1))
        warped = (warped * torch.as_tensor(gain, dtype=torch.float32)).clamp(0, 1)
    maps = policy.perception(warped, [demos.instructions[i] for i in rows])
    index = torch.as_tensor(rows)
    losses = {key: F.cross_entropy(maps[key].flatten(1), labels[key][index])
              for key in ("base", "nose", "target")}
    blocked = labels["blocked"][torch.as_tensor(demos.episode[rows])].float()
    losses["blocked"] = F.binary_cross_entropy_with_logits(maps["blocked"], blocked)
    total = sum(losses.values()) + (blocked_weight - 1.0) * losses["blocked"]
    return total, {k: float(v.detach()) for k, v in losses.items()}


def true_features(demos: MapDemos, config: MapPlannerConfig, stride: int = 1,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, features): ``route_features`` of every ``stride``-th demo frame from the
    simulator's occupancy, pose and target, as the expert saw them."""
    rows = demos.demo_rows[::stride]
    features = [route_features(Perceived(demos.blocked[demos.episode[i]], tuple(demos.poses[i]),
                                         tuple(demos.targets[i])), demos.states[i], config)
                for i in rows]
    return rows, np.stack(features)


def demo_features(policy: MapPlannerPolicy, demos: MapDemos, stride: int = 1,
                  chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(rows, features): ``route_features`` of every ``stride``-th demo frame as the policy
    would see it, one more frame of its episode's memory (``MapPlannerPolicy.track``: maps
    averaged and pose fused with odometry over the episode up to that frame; every frame is
    perceived for that, only the kept ones are planned on)."""
    policy.eval()
    rows = demos.demo_rows
    kept = np.zeros(len(rows), bool)
    kept[::stride] = True
    memories: dict[int, EpisodeMemory] = {}
    out = []
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        episodes = [memories.setdefault(int(demos.episode[i]), policy.new_memory())
                    for i in part]
        perceived = policy.track(demos.images[part], [demos.instructions[i] for i in part],
                                 demos.states[part], episodes)
        out.extend(route_features(seen, demos.states[i], policy.config)
                   for j, (seen, i) in enumerate(zip(perceived, part, strict=True))
                   if kept[start + j])
    return rows[kept], np.stack(out)


def fit_head(policy: MapPlannerPolicy, features: np.ndarray, actions: np.ndarray,
             settings: MapPlannerTraining) -> float:
    """Fit the controller (standardised MSE, AdamW, cosine schedule); the last loss."""
    policy.set_normalization(features, actions)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(actions, dtype=torch.float32)
    optimiser = torch.optim.AdamW(policy.head.parameters(), lr=settings.head_lr,
                                  weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.head_steps)
    rng = np.random.default_rng(settings.seed)
    policy.head.train()
    loss = torch.zeros(())
    for _ in range(settings.head_steps):
        rows = torch.as_tensor(rng.integers(0, len(x), settings.head_batch_size))
        loss = policy.head_loss(x[rows], y[rows])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    policy.eval()
    return float(loss.detach())


def train_map_planner(demos: MapDemos, settings: MapPlannerTraining | None = None,
                      config: MapPlannerConfig | None = None,
                      log: Any = None) -> tuple[MapPlannerPolicy, dict[str, Any]]:
    """Perception until ``time_budget - head_seconds`` has passed, then the head on the
    demos' frames (``head_features``). Returns the policy and the run's figures."""
    settings = settings or MapPlannerTraining()
    if settings.time_budget <= settings.head_seconds:
        raise ValueError(f"time_budget ({settings.time_budget} s) must exceed head_seconds "
                         f"({settings.head_seconds} s)")
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    policy = MapPlannerPolicy(config or config_for(demos))
    labels = perception_labels(demos, policy.config)
    optimiser = torch.optim.AdamW(policy.perception.parameters(), lr=settings.lr,
                                  weight_decay=1e-4)
    started = time.perf_counter()
    deadline = started + settings.time_budget - settings.head_seconds
    steps, parts = 0, {}
    policy.train()
    grounding = np.flatnonzero(~np.isfinite(demos.actions).all(1))
    from_grounding = int(round(settings.batch_size * settings.grounding_share)) if len(
        grounding) else 0
    while time.perf_counter() < deadline:
        # grounding frames are few but each shows another scene and target: draw them often
        rows = np.concatenate([rng.integers(0, len(demos), settings.batch_size - from_grounding),
                               rng.choice(grounding, from_grounding)])
        loss, parts = perception_loss(policy, demos, labels, rows, rng, settings.brightness,
                                      settings.blocked_weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps += 1
        if log is not None and steps % 200 == 0:
            log(f"perception step {steps}: " + ", ".join(f"{k} {v:.3f}"
                                                         for k, v in parts.items()))
    perception_seconds = time.perf_counter() - started
    if settings.head_features == "true":
        demo_rows, features = true_features(demos, policy.config, settings.head_frame_stride)
    else:
        demo_rows, features = demo_features(policy, demos, settings.head_frame_stride)
    head_loss = fit_head(policy, features, demos.actions[demo_rows], settings)
    return policy, {"perception_steps": steps, "perception_seconds": perception_seconds,
                    "final_perception_losses": parts, "head_loss": head_loss,
                    "train_seconds": time.perf_counter() - started,
                    "frames": len(demos), "demo_frames": int(len(demos.demo_rows)),
                    "head_frames": int(len(demo_rows))}
