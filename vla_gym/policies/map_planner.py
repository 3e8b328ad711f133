"""A navigation policy that maps, plans and drives: learned perception, a grid planner, a
cloned controller.

A reactive image policy cloned from NavGoTo demos fails where the target stands in another
room: the expert follows a route planned on the occupancy grid, and neither the egocentric
view nor the target's position tells a policy that route (README, "NavGoTo"). This policy
reads the overhead camera (``cameras=("main", "top")``) and splits the problem where the
expert does:

1. **Perception** (``MapPerception``, learned). The overhead image is resampled onto the
   arena's floor grid through the camera's calibration (``TopViewWarp``), so that one output
   cell is one planning cell. A small convolutional net predicts there, per cell: blocked or
   free (the planner's occupancy, obstacles inflated by the base's radius), where the base's
   centre is, where a point ``nose`` ahead of it is (the two give the heading), and where the
   instructed landmark is (a map conditioned on the instruction by FiLM from a bag-of-words
   embedding). The maps' expected cells give continuous positions.
   **Localisation** fuses that with odometry (``OdometryAnchor``): the state's odometry is
   exact but relative to where the episode started, the overhead view absolute but noisy
   (a base ~6 px across shows its heading poorly; success asks to face the target within
   20 degrees). Each frame's perceived heading, and the path's perceived positions laid
   onto the odometry's, pin down the episode's start pose; that, composed with the odometry,
   is the pose the planner uses.
   **Memory** (``EpisodeMemory``): the camera and the landmarks stay put, so each frame of an
   episode is one more look at the same floor; the target map's log-probabilities and the
   occupancy's logits are averaged over the episode's frames so far (``episode_memory``): the
   controller stops by the target's distance, so a target that wanders from frame to frame
   moves where it stops.
2. **Planning** (fixed): the env's own planner (``envs.navigation.grid``) on the predicted
   occupancy: a clearance-weighted distance field to the predicted target's goal region,
   followed downhill from the base's position to a look-ahead point. It runs on every step
   (~3 ms on a 50 x 50 grid); the only state kept between steps is each env's memory, begun
   afresh on an episode's first frame (odometry exactly zero) or by ``reset()``.
3. **Control** (learned): an MLP from the look-ahead point and the target in the base's
   frame, the target's distance and the base's speeds to ``[v, omega]``, cloned from the
   expert's actions on the demos' frames (``MapPlannerTraining.head_features``: the features
   the simulator's map and pose give, or those the trained perception gives).

The overhead camera stands for a fixed ceiling camera (or a map from a mapping stack); its
calibration travels in the checkpoint (``MapPlannerConfig.camera``). Built and trained by
``vla_gym.training.map_planner``; loaded by ``vla-gym eval`` and ``rollout`` like a
``VLAPolicy`` (``load_batch_policy`` reads the checkpoint's format).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vla_gym.envs.navigation.grid import (
    OccupancyGrid,
    clearance_cost,
    distance_field,
    downhill_path,
    goal_cells,
)
from vla_gym.policies._optional import require
from vla_gym.policies.configuration import check_calibration
from vla_gym.policies.fusion import expected_cell_xy

FORMAT = "vla_gym.MapPlannerPolicy"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOP_VIEW = "top_image"
FEATURES = ("ahead_x", "ahead_y", "target_x", "target_y", "target_distance", "v", "omega")
_WORD = re.compile(r"[a-z]+")
# rad^2 / m^2: how the odometry anchor weighs the path's shape against heading readings
# (``OdometryAnchor``)
ANCHOR_POSITION_WEIGHT = 80.0


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class MapPlannerConfig:
    """Everything needed to rebuild the policy; written to ``config.json``."""

    vocabulary: list[str]  # instruction words; any other word is one shared "unknown" token
    # the overhead camera's calibration, as tabletop envs give theirs: {"frame": "world",
    # "pos": 3 numbers, "rot": its axes, 9 numbers row-major, "fovy": degrees}
    camera: dict[str, Any]
    arena_half: float = 2.5  # m: the planning grid spans [-arena_half, arena_half]^2
    resolution: float = 0.1  # m per planning cell
    upsample: int = 2  # image samples per planning cell along each axis
    sample_height: float = 0.2  # m: the height the overhead image is resampled at
    nose: float = 0.25  # m ahead of the base's centre: the second point its heading comes from
    state_odometry: tuple[int, int, int] = (0, 1, 2)  # indices of x, y, yaw in the state
    channels: int = 24
    word_dim: int = 32
    goal_radius: float = 0.3  # m: where the planner aims, inside the success radius
    lookahead_cells: int = 4
    head_hidden: int = 256
    action_dim: int = 2
    state_velocities: tuple[int, int] = (3, 4)  # indices of v and omega in the state
    episode_memory: bool = True  # average the target and occupancy maps over the episode
    anchor_position_weight: float = ANCHOR_POSITION_WEIGHT
    # What the env must render for this policy (the rollout runner reads both).
    cameras = ("main", "top")
    extra_views = (TOP_VIEW,)

    @property
    def cells(self) -> int:
        return int(round(2 * self.arena_half / self.resolution))

    def to_dict(self) -> dict[str, Any]:
        return {"policy_type": "map_planner", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MapPlannerConfig:
        data = {k: v for k, v in data.items() if k != "policy_type"}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MapPlannerConfig field(s) {unknown}; valid: "
                             f"{sorted(known)}")
        for key in ("state_velocities", "state_odometry"):
            if key in data:
                data[key] = tuple(data[key])
        config = cls(**data)
        check_calibration({TOP_VIEW: config.camera})
        if config.camera["frame"] != "world":
            raise ValueError("the overhead camera must be fixed in the world (frame 'world')")
        return config


def camera_calibration(model: Any, data: Any, camera: str = "top") -> dict[str, Any]:
    """A world-fixed MuJoCo camera's pose and field of view, as ``MapPlannerConfig.camera``
    keeps it (``data`` after ``mj_forward``)."""
    import mujoco

    from vla_gym.envs.rendering import calibration_record

    cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if cam < 0:
        raise ValueError(f"no camera named {camera!r} in the model")
    if model.cam_bodyid[cam] != 0:
        raise ValueError(f"camera {camera!r} moves with a body; the map needs a fixed one")
    return calibration_record("world", data.cam_xpos[cam], data.cam_xmat[cam],
                              model.cam_fovy[cam])


def project_points(camera: dict[str, Any], points: np.ndarray) -> np.ndarray:
    """(..., 3) world points -> (..., 2) image (column, row) in [0, 1], as
    ``envs.rendering.CameraProjection`` computes it (square images)."""
    rotation = np.asarray(camera["rot"], float).reshape(3, 3)
    local = (np.asarray(points, float) - np.asarray(camera["pos"], float)) @ rotation
    depth = -local[..., 2]
    if np.any(depth <= 1e-6):
        raise ValueError("a point to project lies behind the camera")
    scale = 0.5 / math.tan(math.radians(camera["fovy"]) / 2) / depth
    return np.stack([0.5 + scale * local[..., 0], 0.5 - scale * local[..., 1]], -1)


class TopViewWarp(nn.Module):
    """Resamples overhead images onto the floor grid: output row ``r``, column ``c`` is the
    image where the world point of that fine cell (at ``sample_height``) appears; rows run
    along +y, columns along +x, as in ``envs.navigation.grid.OccupancyGrid``."""

    def __init__(self, config: MapPlannerConfig) -> None:
        super().__init__()
        fine = config.cells * config.upsample
        step = 2 * config.arena_half / fine
        centres = -config.arena_half + (np.arange(fine) + 0.5) * step
        xs, ys = np.meshgrid(centres, centres)
        points = np.stack([xs, ys, np.full_like(xs, config.sample_height)], -1)
        pixels = project_points(config.camera, points)
        # grid_sample's coordinates: x (column) then y (row), -1..1 across the image's edges
        self.register_buffer("grid", torch.as_tensor(2 * pixels - 1, dtype=torch.float32)[None],
                             persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, fine, fine) float in [0, 1]."""
        x = images.permute(0, 3, 1, 2).float() / 255.0
        return F.grid_sample(x, self.grid.expand(len(x), -1, -1, -1), align_corners=False)


class MapPerception(nn.Module):
    """Warped overhead image + instruction -> per-cell logits ``blocked``, ``base``,
    ``nose`` and ``target`` (each (B, cells, cells))."""

    def __init__(self, config: MapPlannerConfig) -> None:
        super().__init__()
        ch, up = config.channels, config.upsample
        self.vocabulary = {w: i for i, w in enumerate(config.vocabulary)}
        self.words = nn.EmbeddingBag(len(config.vocabulary) + 1, config.word_dim, mode="mean")
        self.film = nn.Sequential(nn.Linear(config.word_dim, 2 * ch), nn.ReLU(),
                                  nn.Linear(2 * ch, 2 * ch))
        self.stem = nn.Sequential(nn.Conv2d(5, ch, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(ch, ch, up + 1, stride=up, padding=up // 2),
                                  nn.ReLU())
        # Dilations reach ~3 m around each cell: far enough to see which side of a wall it is
        self.body = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=d, dilation=d)
                                  for d in (1, 2, 4, 8, 1))
        self.scene = nn.Conv2d(ch, 3, 1)  # blocked, base, nose
        self.target = nn.Sequential(nn.Conv2d(ch, ch, 1), nn.ReLU(), nn.Conv2d(ch, 1, 1))
        fine = config.cells * up
        ramp = torch.linspace(-1, 1, fine)
        ys, xs = torch.meshgrid(ramp, ramp, indexing="ij")
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)

    def encode(self, instructions: list[str]) -> torch.Tensor:
        unknown = len(self.vocabulary)
        ids = [[self.vocabulary.get(w, unknown) for w in words(t)] or [unknown]
               for t in instructions]
        flat = torch.as_tensor([i for row in ids for i in row], device=self.coords.device)
        offsets = torch.as_tensor(np.cumsum([0] + [len(r) for r in ids[:-1]]),
                                  device=self.coords.device)
        return self.words(flat, offsets)

    def forward(self, warped: torch.Tensor, instructions: list[str]) -> dict[str, torch.Tensor]:
        x = torch.cat([warped, self.coords.expand(len(warped), -1, -1, -1)], 1)
        h = self.stem(x)
        for conv in self.body:
            h = F.relu(conv(h)) + h
        gain, bias = self.film(self.encode(instructions)).chunk(2, -1)
        scene = self.scene(h)
        target = self.target(h * (1 + gain[..., None, None]) + bias[..., None, None])
        return {"blocked": scene[:, 0], "base": scene[:, 1], "nose": scene[:, 2],
                "target": target[:, 0]}


def expected_xy(logits: torch.Tensor, arena_half: float, resolution: float) -> torch.Tensor:
    """(B, n, n) cell logits -> (B, 2) world (x, y): the softmax-weighted cell centre (the
    first and last cells' centres lie half a cell inside the arena's edges)."""
    return expected_cell_xy(logits.flatten(1)) * (arena_half - resolution / 2)


@dataclass
class Perceived:
    """What perception says about one frame, in world coordinates."""

    blocked: np.ndarray  # (n, n) bool
    pose: tuple[float, float, float]  # base x, y, yaw
    target: tuple[float, float]


class OdometryAnchor:
    """One episode's start pose in the world, estimated from every frame so far, so that the
    pose is the start pose composed with the (exact) odometry.

    Two kinds of evidence pin the start's heading down. Each frame's perceived heading minus
    its odometry heading is one reading of it, but a base a few pixels across shows its
    heading poorly, and the errors of neighbouring frames are alike (a base parked for 300
    steps gives 300 copies of one error). The path does better once the base has moved: the
    perceived positions (a few centimetres off) and the odometry's positions are one path in
    two frames, and the rotation that lays one onto the other (2-D Procrustes) is the start's
    heading, sharper the longer the path. Both add up as vectors: each heading reading a unit
    vector, the path ``position_weight`` times its centred dot and cross sums. The weight is
    the ratio of the two noise variances (rad^2 / m^2): ~10 degrees of heading against ~4 cm
    of position gives ~20; the heading readings' alike errors argue for more, and 20 and 80
    did alike on validation scenes (README). The position is then the mean of (perceived
    position - R(heading) odometry position). Every term is a running sum."""

    def __init__(self, position_weight: float = ANCHOR_POSITION_WEIGHT) -> None:
        self.position_weight = position_weight
        self.count = 0
        self._turn = np.zeros(2)  # sum of (cos, sin) of perceived yaw - odometry yaw
        self._seen = np.zeros(2)  # sum of perceived positions
        self._driven = np.zeros(2)  # sum of odometry positions
        self._aligned = np.zeros(2)  # sums of odometry . perceived and odometry x perceived

    def update(self, perceived: tuple[float, float, float],
               odometry: np.ndarray) -> tuple[float, float, float]:
        """Add a frame; the fused world pose of the base at that frame."""
        ox, oy, oyaw = (float(v) for v in odometry)
        px, py = float(perceived[0]), float(perceived[1])
        turn = perceived[2] - oyaw
        self._turn += (math.cos(turn), math.sin(turn))
        self._seen += (px, py)
        self._driven += (ox, oy)
        self._aligned += (ox * px + oy * py, ox * py - oy * px)
        self.count += 1
        seen, driven = self._seen / self.count, self._driven / self.count
        # centred sums: sum (o - mean o) . (p - mean p) and the same for the cross product
        dot = self._aligned[0] - self.count * (driven[0] * seen[0] + driven[1] * seen[1])
        cross = self._aligned[1] - self.count * (driven[0] * seen[1] - driven[1] * seen[0])
        yaw0 = math.atan2(self._turn[1] + self.position_weight * cross,
                          self._turn[0] + self.position_weight * dot)
        c, s = math.cos(yaw0), math.sin(yaw0)
        x0 = seen[0] - (c * driven[0] - s * driven[1])
        y0 = seen[1] - (s * driven[0] + c * driven[1])
        return (x0 + c * ox - s * oy, y0 + s * ox + c * oy,
                math.remainder(yaw0 + oyaw, 2 * math.pi))


class EpisodeMemory:
    """What one env's episode has shown so far: its start pose (``OdometryAnchor``) and, when
    ``maps`` is set, the running means of the target map's log-probabilities and of the
    occupancy's logits (one frame's maps pass through unchanged)."""

    def __init__(self, maps: bool = True,
                 position_weight: float = ANCHOR_POSITION_WEIGHT) -> None:
        self.anchor = OdometryAnchor(position_weight)
        self.maps = maps
        self.frames = 0
        self._target: torch.Tensor | None = None  # sum of log-probabilities, (n, n)
        self._blocked: torch.Tensor | None = None  # sum of logits, (n, n)

    def remember(self, target_logp: torch.Tensor, blocked: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one frame's maps; the maps to plan on (the means so far, or the frame's)."""
        if not self.maps:
            return target_logp, blocked
        self.frames += 1
        if self._target is None or self._blocked is None:
            self._target, self._blocked = target_logp.clone(), blocked.clone()
        else:
            self._target += target_logp
            self._blocked += blocked
        return self._target / self.frames, self._blocked / self.frames


def is_first_frame(odometry: np.ndarray) -> bool:
    """Odometry is exactly zero on an episode's first frame (it counts from there)."""
    return not np.any(odometry)


def route_features(perceived: Perceived, state: np.ndarray, config: MapPlannerConfig,
                   ) -> np.ndarray:
    """``FEATURES`` for one frame: plan on the perceived map, then express the look-ahead
    point and the target in the base's frame."""
    grid = OccupancyGrid(perceived.blocked, -config.arena_half, config.resolution)
    goal = goal_cells(grid, perceived.target, config.goal_radius)
    if not goal.any():  # the target's whole goal region perceived as blocked: free it
        ring = goal_cells(OccupancyGrid(np.zeros_like(grid.blocked), grid.origin,
                                        grid.resolution), perceived.target, config.goal_radius)
        grid = OccupancyGrid(grid.blocked & ~ring, grid.origin, grid.resolution)
        goal = ring
    field = distance_field(grid, goal, clearance_cost(grid))
    x, y, yaw = perceived.pose
    ahead = downhill_path(grid, field, x, y, config.lookahead_cells)[-1]
    c, s = math.cos(yaw), math.sin(yaw)

    def in_base_frame(point: tuple[float, float]) -> list[float]:
        dx, dy = point[0] - x, point[1] - y
        return [c * dx + s * dy, -s * dx + c * dy]

    tx, ty = perceived.target
    v, omega = (float(state[i]) for i in config.state_velocities)
    return np.array([*in_base_frame(ahead), *in_base_frame((tx, ty)),
                     math.hypot(tx - x, ty - y), v, omega], np.float32)


class MapPlannerPolicy(nn.Module):
    """Perception -> planner -> cloned controller (module docstring). ``predict(obs_batch)``
    and ``act(obs)`` as every vla_gym policy; also the rollout runner's batch callable."""

    def __init__(self, config: MapPlannerConfig) -> None:
        super().__init__()
        self.config = config
        self.warp = TopViewWarp(config)
        self.perception = MapPerception(config)
        n = len(FEATURES)
        self.head = nn.Sequential(nn.Linear(n, config.head_hidden), nn.GELU(),
                                  nn.Linear(config.head_hidden, config.head_hidden), nn.GELU(),
                                  nn.Linear(config.head_hidden, config.action_dim))
        for name, size in (("feature", n), ("action", config.action_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(size))
            self.register_buffer(f"{name}_std", torch.ones(size))
        self._memories: list[EpisodeMemory] = []  # one per row of the batches predicted

    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    def reset(self) -> None:
        """Forget every env's episode (each row's memory also restarts by itself on an
        episode's first frame)."""
        self._memories = []

    def new_memory(self) -> EpisodeMemory:
        return EpisodeMemory(self.config.episode_memory, self.config.anchor_position_weight)

    def episode_memories(self, states: np.ndarray) -> list[EpisodeMemory]:
        """Row ``i``'s memory (the same env from call to call), begun afresh on an episode's
        first frame."""
        if len(self._memories) != len(states):
            self._memories = [self.new_memory() for _ in states]
        for i, state in enumerate(states):
            if is_first_frame(state[list(self.config.state_odometry)]):
                self._memories[i] = self.new_memory()
        return self._memories

    # -- perception ------------------------------------------------------------------------
    def maps(self, images: np.ndarray | torch.Tensor, instructions: list[str],
             ) -> dict[str, torch.Tensor]:
        images = torch.as_tensor(np.asarray(images, np.uint8))
        return self.perception(self.warp(images), list(instructions))

    def _read(self, maps: dict[str, torch.Tensor]) -> list[Perceived]:
        cfg = self.config
        base, nose, target = (expected_xy(maps[k], cfg.arena_half, cfg.resolution).numpy()
                              for k in ("base", "nose", "target"))
        yaw = np.arctan2(nose[:, 1] - base[:, 1], nose[:, 0] - base[:, 0])
        blocked = (maps["blocked"] > 0).numpy()
        return [Perceived(blocked[i], (float(base[i, 0]), float(base[i, 1]), float(yaw[i])),
                          (float(target[i, 0]), float(target[i, 1])))
                for i in range(len(blocked))]

    @torch.no_grad()
    def perceive(self, images: np.ndarray, instructions: list[str]) -> list[Perceived]:
        """What each frame alone shows (no memory, no odometry)."""
        return self._read(self.maps(images, instructions))

    @torch.no_grad()
    def track(self, images: np.ndarray, instructions: list[str], states: np.ndarray,
              memories: list[EpisodeMemory]) -> list[Perceived]:
        """Row ``i`` seen as one more frame of ``memories[i]``'s episode: its target and
        occupancy maps averaged over the episode (``EpisodeMemory``), its pose fused with
        odometry (``OdometryAnchor``)."""
        maps = self.maps(images, instructions)
        n = self.config.cells
        target_logp = F.log_softmax(maps["target"].flatten(1), -1).view(-1, n, n)
        target, blocked = zip(*(memory.remember(t, b) for memory, t, b in
                                zip(memories, target_logp, maps["blocked"], strict=True)))
        seen = self._read({**maps, "target": torch.stack(target),
                           "blocked": torch.stack(blocked)})
        odometry = list(self.config.state_odometry)
        return [Perceived(p.blocked, memory.anchor.update(p.pose, state[odometry]), p.target)
                for p, memory, state in zip(seen, memories, states, strict=True)]

    # -- control ---------------------------------------------------------------------------
    def set_normalization(self, features: np.ndarray, actions: np.ndarray) -> None:
        for name, data in (("feature", features), ("action", actions)):
            values = torch.as_tensor(np.asarray(data, np.float32))
            getattr(self, f"{name}_mean").copy_(values.mean(0))
            getattr(self, f"{name}_std").copy_(values.std(0) + 1e-6)

    def head_loss(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the head's standardised actions."""
        x = (features - self.feature_mean) / self.feature_std
        y = (actions - self.action_mean) / self.action_std
        return (self.head(x) - y).pow(2).mean()

    @torch.no_grad()
    def control(self, features: np.ndarray) -> np.ndarray:
        x = (torch.as_tensor(features, dtype=torch.float32) - self.feature_mean) / self.feature_std
        actions = self.head(x) * self.action_std + self.action_mean
        return actions.clamp(-1.0, 1.0).numpy().astype(np.float32)

    # -- the policy contract ---------------------------------------------------------------
    def predict(self, obs_batch: dict[str, Any]) -> np.ndarray:
        """(B, action_dim) actions for a batch of observations (vector-env layout)."""
        for key in (TOP_VIEW, "instruction", "state"):
            if key not in obs_batch:
                raise ValueError(f"MapPlannerPolicy needs observation key {key!r} (make the env "
                                 f"with cameras={self.config.cameras!r}); got "
                                 f"{sorted(obs_batch)}")
        images = np.asarray(obs_batch[TOP_VIEW])
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{TOP_VIEW} must be a batch (B, H, W, 3), got {images.shape}")
        instructions = obs_batch["instruction"]
        instructions = [instructions] if isinstance(instructions, str) else list(instructions)
        states = np.asarray(obs_batch["state"], np.float32).reshape(len(images), -1)
        perceived = self.track(images, instructions, states, self.episode_memories(states))
        features = np.stack([route_features(p, s, self.config)
                             for p, s in zip(perceived, states, strict=True)])
        return self.control(features)

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        batch = {TOP_VIEW: np.asarray(obs[TOP_VIEW])[None], "instruction": [obs["instruction"]],
                 "state": np.asarray(obs["state"])[None]} if TOP_VIEW in obs else obs
        return self.predict(batch)[0]

    def __call__(self, obs_batch: dict[str, Any], info_batch: Any = None) -> np.ndarray:
        return self.predict(obs_batch)

    # -- checkpoints -----------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        st = require("safetensors.torch")
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        (root / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2))
        st.save_model(self, str(root / WEIGHTS_NAME), metadata={"format": FORMAT})
        return root

    @classmethod
    def from_pretrained(cls, path: str | Path) -> MapPlannerPolicy:
        from vla_gym.policies.checkpoint import CheckpointError, load_into

        root = Path(path)
        try:
            config = MapPlannerConfig.from_dict(json.loads((root / CONFIG_NAME).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{root / CONFIG_NAME}: not a MapPlannerPolicy config "
                                  f"({exc})") from exc
        st = require("safetensors")
        try:
            with st.safe_open(str(root / WEIGHTS_NAME), framework="pt") as f:
                fmt = (f.metadata() or {}).get("format")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{root / WEIGHTS_NAME}: unreadable ({exc})") from exc
        if fmt != FORMAT:
            raise CheckpointError(f"{root / WEIGHTS_NAME} was not written by "
                                  f"MapPlannerPolicy.save_pretrained (format {fmt!r})")
        policy = cls(config)
        load_into(policy, tensors, str(root / WEIGHTS_NAME))
        return policy.eval()


def is_map_planner_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a ``MapPlannerPolicy`` (its config says so)."""
    try:
        data = json.loads((Path(path) / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("policy_type") == "map_planner"
