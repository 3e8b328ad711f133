"""Target geometry: each view's target map lifted onto the table, relative to the gripper.

A target map says *where in the image* the instructed object is; the action an arm needs is
*where in the world* it is relative to the gripper. Between the two sits the camera's
projection, which a small action head learns poorly from a few hundred demos. With the
cameras calibrated (the main camera fixed in the world, the wrist camera fixed on the end
effector, whose pose the state gives), that step is exact: cast a ray through the map's
expected pixel and cut it with the horizontal plane at the target's height. The height comes
from a small regressor on the main view's fused features (which shape the object is sets how
tall it is), supervised by the target's true position.

What reaches the head, per calibrated view: the lifted target minus the gripper (x, y), in
decimetres, and the map's peak probability (how sure the map is; a wrist camera often does
not see the target at all); then the target's height minus the gripper's. Maps and height are
detached: perception learns from its own labels, the head learns to act on what perception
says. On pixel-shift-augmented batches each map's pixel is moved back by its image's shift
before lifting, so the geometry stays that of the real camera.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vla_gym.policies.configuration import check_calibration
from vla_gym.policies.fusion import expected_cell_xy
from vla_gym.types import ARM_STATE_FIELDS

UNIT_M = 0.1  # offsets reach the head in decimetres
HEIGHT_UNIT_M = 0.01  # the height regressor's output unit (cm): table-top heights differ by cm
# How tightly a focus point (exploration) pulls a target map: a Gaussian of this std on the
# table (m), in each view's image scale at the point's depth. For the main camera (~0.7 m
# away) that is about two thirds of a cell of its 12 x 12 map, so the map's own logits still
# centre it on the object there; in a close wrist view it is wide, so a focus a few cm off
# the object does not override that map.
FOCUS_SIGMA_M = 0.04
EE_POS = tuple(ARM_STATE_FIELDS.index(f"ee_{a}") for a in "xyz")
EE_QUAT = tuple(ARM_STATE_FIELDS.index(f"ee_q{a}") for a in "wxyz")


def calibration_from_env(env: Any, views: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The calibration of ``views`` from a tabletop env's model (``env.camera_calibration``)."""
    base = getattr(env, "unwrapped", env)
    if not hasattr(base, "camera_calibration"):
        raise ValueError(f"{type(base).__name__} has no calibrated cameras; target geometry "
                         "needs a tabletop env (an arm with an end effector in its state)")
    cameras = base.camera_calibration()
    missing = [v for v in views if v not in cameras]
    if missing:
        raise ValueError(f"no calibration for {missing}; the env calibrates {sorted(cameras)}")
    return {view: cameras[view] for view in views}


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """(B, 4) unit quaternions (w, x, y, z) -> (B, 3, 3) rotation matrices."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).view(*q.shape[:-1], 3, 3)


def map_pixel(target_map: Tensor) -> Tensor:
    """(B, 2) image (column, row) in [0, 1] of a target map's expected cell position.

    ``expected_cell_xy`` puts the first and last cell centres at -1 and 1; cell ``i``'s centre
    is at ``(i + 0.5) / side`` of the image."""
    side = int(round(target_map.shape[1] ** 0.5))
    cell = (expected_cell_xy(target_map) + 1) / 2 * (side - 1)
    return (cell + 0.5) / side


class TargetGeometry(nn.Module):
    """Lifted target offsets for the action head, and the height regressor they need."""

    def __init__(self, cameras: Mapping[str, Mapping[str, Any]], views: Sequence[str],
                 fused_dim: int) -> None:
        super().__init__()
        check_calibration(cameras)
        self.views = tuple(v for v in views if v in cameras)
        self.slots = tuple(list(views).index(v) for v in self.views)
        cals = [cameras[v] for v in self.views]
        self.register_buffer("pos", torch.tensor([c["pos"] for c in cals], dtype=torch.float32)
                             .view(-1, 3), persistent=False)
        self.register_buffer("rot", torch.tensor([c["rot"] for c in cals], dtype=torch.float32)
                             .view(-1, 3, 3), persistent=False)
        focal = [0.5 / np.tan(np.radians(float(c["fovy"])) / 2) for c in cals]  # square images
        self.register_buffer("focal", torch.tensor(focal, dtype=torch.float32), persistent=False)
        self.on_effector = tuple(c["frame"] == "end_effector" for c in cals)
        self.height = nn.Linear(fused_dim, 1)

    @property
    def out_dim(self) -> int:
        return 3 * len(self.views) + 1

    def predict_height(self, main_fused: Tensor) -> Tensor:
        """(B,) the target's height in metres (world z of its centre)."""
        return self.height(main_fused).squeeze(-1) * HEIGHT_UNIT_M

    def forward(self, maps: Sequence[Tensor | None], main_fused: Tensor, state: Tensor,
                shifts: Mapping[str, Tensor] | None = None, focus: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """``maps``: each view's target-map logits in config.views order; ``state``: the raw
        (unstandardised) state; ``shifts``: per view, (B, 2) how far augmentation moved the
        image content, in image fractions; ``focus``: (B, 3) world points each map is pulled
        toward before lifting (:func:`focus_bias`; NaN rows are left alone). Returns (head
        features, predicted height)."""
        height = self.predict_height(main_fused)
        # Millimetres matter here: no bfloat16 autocast for the ray casting (it moves the
        # lifted point by ~1 mm).
        with torch.autocast(device_type=state.device.type, enabled=False):
            return self._lift(maps, height.detach().float(), state.float(), shifts,
                              None if focus is None else focus.float()), height

    @torch.no_grad()
    def project(self, points: Tensor, state: Tensor) -> dict[str, Tensor]:
        """Where world ``points`` (B, 3) appear in each calibrated view, given the raw ``state``
        (B, state_dim) that places the end effector: per view, (B, 2) (column, row) in image
        fractions as the env's pixel labels give them (outside [0, 1] out of frame, NaN behind
        the camera). The inverse of the ray casting that lifts a map's pixel."""
        points, state = points.float(), state.float()
        ee, ee_rot = self._effector_pose(state)
        return {view: self._project_view(i, points, ee, ee_rot)[0]
                for i, view in enumerate(self.views)}

    @torch.no_grad()
    def lift(self, view: str, pixel: Tensor, z: Tensor, state: Tensor) -> Tensor:
        """(B, 3) world points seen at ``pixel`` (B, 2) of calibrated ``view``, on the
        horizontal plane at height ``z`` (B,) m."""
        if view not in self.views:
            raise ValueError(f"no calibration for {view!r}; this geometry has {self.views}")
        i = self.views.index(view)
        ee, ee_rot = self._effector_pose(state.float())
        return self._ray_point(i, pixel.float(), z.float(), ee, ee_rot)

    def _project_view(self, i: int, points: Tensor, ee: Tensor, ee_rot: Tensor
                      ) -> tuple[Tensor, Tensor]:
        """(B, 2) pixels of ``points`` in view ``i`` (NaN behind it) and (B,) their depth
        along the camera's axis (m; 1 behind it)."""
        origin, world_from_camera = self._camera_pose(i, ee, ee_rot)
        local = (world_from_camera.transpose(-1, -2) @ (points - origin).unsqueeze(-1))[..., 0]
        depth = -local[:, 2]  # the camera looks down its -z
        safe = torch.where(depth > 1e-6, depth, torch.ones_like(depth))
        pixel = torch.stack([0.5 + self.focal[i] * local[:, 0] / safe,
                             0.5 - self.focal[i] * local[:, 1] / safe], dim=-1)
        pixel = torch.where((depth > 1e-6).unsqueeze(-1), pixel,
                            torch.full_like(pixel, float("nan")))
        return pixel, safe

    def _ray_point(self, i: int, pixel: Tensor, z: Tensor, ee: Tensor, ee_rot: Tensor
                   ) -> Tensor:
        """Where the ray through ``pixel`` of view ``i`` meets the plane at height ``z``."""
        ray = torch.stack([(pixel[:, 0] - 0.5) / self.focal[i],
                           -(pixel[:, 1] - 0.5) / self.focal[i],
                           -torch.ones_like(pixel[:, 0])], dim=-1)  # camera looks down -z
        origin, world_from_camera = self._camera_pose(i, ee, ee_rot)
        direction = (world_from_camera @ ray.unsqueeze(-1)).squeeze(-1)
        # A ray that does not point down never meets the plane: treat it as nearly level.
        down = direction[:, 2].clamp(max=-1e-2)
        xy = origin[:, :2] + ((z - origin[:, 2]) / down).unsqueeze(-1) * direction[:, :2]
        return torch.cat([xy, z.unsqueeze(-1)], dim=-1)

    @staticmethod
    def _effector_pose(state: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3) position and (B, 3, 3) rotation of the end effector in the raw state."""
        return state[:, list(EE_POS)], quaternion_to_matrix(state[:, list(EE_QUAT)])

    def _camera_pose(self, i: int, ee: Tensor, ee_rot: Tensor) -> tuple[Tensor, Tensor]:
        """View ``i``'s camera origin (B, 3) and world-from-camera rotation ((B, 3, 3) on the
        effector, (3, 3) fixed in the world)."""
        if self.on_effector[i]:
            return ee + ee_rot @ self.pos[i], ee_rot @ self.rot[i]
        return self.pos[i].expand_as(ee), self.rot[i]

    def _lift(self, maps: Sequence[Tensor | None], z: Tensor, state: Tensor,
              shifts: Mapping[str, Tensor] | None, focus: Tensor | None) -> Tensor:
        ee, ee_rot = self._effector_pose(state)
        parts = []
        for i, (view, slot) in enumerate(zip(self.views, self.slots)):
            logits = maps[slot]
            if logits is None:
                raise ValueError(f"target geometry lifts {view!r} but its fusion has no target "
                                 "map; use fusion.kind='film'")
            logits = logits.detach().float()
            # the map's own confidence, steered or not: a focus moves where, not how sure
            peak = torch.softmax(logits, dim=-1).amax(dim=-1, keepdim=True)
            shift = shifts.get(view) if shifts is not None else None
            if focus is not None:
                pixel, depth = self._project_view(i, focus, ee, ee_rot)
                if shift is not None:
                    pixel = pixel + shift.to(pixel)
                sigma = self.focal[i] * FOCUS_SIGMA_M / depth.clamp_min(1e-3)
                logits = logits + focus_bias(logits, pixel, sigma)
            pixel = map_pixel(logits)
            if shift is not None:
                pixel = pixel - shift.to(pixel)
            point = self._ray_point(i, pixel, z, ee, ee_rot)
            offset = ((point[:, :2] - ee[:, :2]) / UNIT_M).clamp(-10.0, 10.0)
            parts += [offset, peak]
        parts.append(((z - ee[:, 2]) / UNIT_M).unsqueeze(-1))
        return torch.cat(parts, dim=-1)


def cell_centres(logits: Tensor) -> Tensor:
    """(cells, 2) (column, row) image fractions of each cell centre of a square map's logits
    (B, cells), in the logits' row-major order: cell ``i`` of a side spans ``i / side`` to
    ``(i + 1) / side`` of the image, as :func:`map_pixel` reads it."""
    side = int(round(logits.shape[1] ** 0.5))
    centres = (torch.arange(side, device=logits.device, dtype=logits.dtype) + 0.5) / side
    rows, cols = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1)


def focus_bias(logits: Tensor, pixel: Tensor, sigma: Tensor | float) -> Tensor:
    """(B, cells) log-weights of a Gaussian of std ``sigma`` (image fractions; a float or (B,)
    per row) around each row's ``pixel`` (B, 2) on a square map's cell centres: added to a
    map's logits, the map's mass moves to the object there while its own logits still centre
    it on the object. Rows whose pixel is NaN or out of the image get zeros (nothing to pull
    toward)."""
    cells = cell_centres(logits)  # (cells, 2) (col, row)
    inside = torch.isfinite(pixel).all(-1) & ((pixel >= 0) & (pixel <= 1)).all(-1)
    safe = torch.where(inside.unsqueeze(-1), pixel, torch.zeros_like(pixel))
    sigma = torch.as_tensor(sigma, dtype=logits.dtype, device=logits.device).reshape(-1, 1)
    bias = -((cells.unsqueeze(0) - safe.unsqueeze(1)) ** 2).sum(-1) / (2 * sigma ** 2)
    return torch.where(inside.unsqueeze(-1), bias, torch.zeros_like(bias))


def map_peaks(logits: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The ``count`` strongest blobs of a square target map, strongest first: (B, count, 2)
    (column, row) image fractions of each blob's centre of mass over its 3 x 3 cells, and
    (B, count) the map's probability mass there. Each pick suppresses the 5 x 5 cells around
    it, so blobs are distinct objects' worth apart (a cell is ~8% of the image)."""
    side = int(round(logits.shape[1] ** 0.5))
    prob = torch.softmax(logits.float(), dim=-1).view(-1, 1, side, side)
    cells = cell_centres(prob.view(prob.shape[0], -1))
    col, row = (cells[:, k].view(1, 1, side, side).expand_as(prob) for k in (0, 1))
    pooled = [torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=True) * 9
              for x in (prob, prob * col, prob * row)]
    mass, col_mass, row_mass = (x.view(x.shape[0], -1) for x in pooled)
    open_cells = torch.ones_like(mass, dtype=torch.bool)
    pixels, masses = [], []
    grid_row = torch.arange(side * side, device=logits.device) // side
    grid_col = torch.arange(side * side, device=logits.device) % side
    for _ in range(count):
        best = torch.where(open_cells, mass, torch.full_like(mass, -1.0)).argmax(-1)  # (B,)
        m = mass.gather(1, best[:, None])[:, 0].clamp_min(1e-12)
        pixels.append(torch.stack([col_mass.gather(1, best[:, None])[:, 0] / m,
                                   row_mass.gather(1, best[:, None])[:, 0] / m], dim=-1))
        masses.append(mass.gather(1, best[:, None])[:, 0])
        near = (((grid_row[None] - grid_row[best][:, None]).abs() <= 2)
                & ((grid_col[None] - grid_col[best][:, None]).abs() <= 2))
        open_cells &= ~near
    return torch.stack(pixels, dim=1), torch.stack(masses, dim=1)
