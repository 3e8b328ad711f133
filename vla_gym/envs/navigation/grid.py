"""Occupancy grid and geodesic distance fields over a world, for shaping rewards and planning.

The grid marks every cell a robot centre cannot occupy (obstacles inflated by the robot's
radius plus a margin). A distance field holds each free cell's shortest 8-connected path
length (m) to a goal region; following it downhill is the expert's global plan, and its drop
per step is the env's ``progress`` reward term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vla_gym.envs.navigation.world import ARENA_HALF, LANDMARK_FOOTPRINT, World

RESOLUTION = 0.1  # m per cell
INFLATION = 0.25  # m: robot radius 0.18 plus a safety margin
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


@dataclass
class OccupancyGrid:
    blocked: np.ndarray  # bool (H, W); row = y index, column = x index
    origin: float = -ARENA_HALF
    resolution: float = RESOLUTION

    @property
    def centres(self) -> np.ndarray:
        """Cell-centre coordinates along either axis."""
        n = self.blocked.shape[0]
        return self.origin + (np.arange(n) + 0.5) * self.resolution

    def cell(self, x: float, y: float) -> tuple[int, int]:
        n = self.blocked.shape[0]
        col = int(np.clip((x - self.origin) / self.resolution, 0, n - 1))
        row = int(np.clip((y - self.origin) / self.resolution, 0, n - 1))
        return row, col

    def point(self, row: int, col: int) -> tuple[float, float]:
        return (self.origin + (col + 0.5) * self.resolution,
                self.origin + (row + 0.5) * self.resolution)


def occupancy(world: World, inflation: float = INFLATION) -> OccupancyGrid:
    n = int(round(2 * ARENA_HALF / RESOLUTION))
    centres = -ARENA_HALF + (np.arange(n) + 0.5) * RESOLUTION
    xs, ys = np.meshgrid(centres, centres)  # ys varies along rows
    blocked = np.zeros((n, n), bool)
    for box in (*world.walls, *world.furniture):
        blocked |= (np.abs(xs - box.cx) <= box.hx + inflation) & (
            np.abs(ys - box.cy) <= box.hy + inflation)
    for obj in world.landmarks:
        reach = LANDMARK_FOOTPRINT[obj.shape] + inflation
        blocked |= np.hypot(xs - obj.xy[0], ys - obj.xy[1]) <= reach
    return OccupancyGrid(blocked)


def goal_cells(grid: OccupancyGrid, xy: tuple[float, float], radius: float) -> np.ndarray:
    """Free cells whose centres lie within ``radius`` of ``xy``."""
    c = grid.centres
    xs, ys = np.meshgrid(c, c)
    return (np.hypot(xs - xy[0], ys - xy[1]) <= radius) & ~grid.blocked


def distance_field(grid: OccupancyGrid, goal: np.ndarray,
                   cell_cost: np.ndarray | None = None) -> np.ndarray:
    """Path length (m) from each free cell to the nearest ``goal`` cell; inf if unreachable.

    ``cell_cost`` (>= 1 per cell) weights the length of steps into each cell, for plans that
    keep away from walls. Wavefront relaxation in numpy: each sweep relaxes all cells through
    their 8 neighbours; the loop ends when a sweep changes nothing.
    """
    h, w = grid.blocked.shape
    field = np.where(goal, 0.0, np.inf)
    weight = np.ones((h, w)) if cell_cost is None else cell_cost
    steps = [math.hypot(dy, dx) * grid.resolution * weight for dy, dx in _NEIGHBOURS]
    for _ in range(h * w):
        padded = np.pad(field, 1, constant_values=np.inf)
        best = field.copy()
        for (dy, dx), step in zip(_NEIGHBOURS, steps):
            np.minimum(best, padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] + step, out=best)
        best[grid.blocked] = np.inf
        best[goal] = 0.0
        if np.array_equal(best, field):
            break
        field = best
    return field


def clearance_cost(grid: OccupancyGrid, comfort: float = 0.3, penalty: float = 6.0) -> np.ndarray:
    """Per-cell step weight: 1 where a cell is ``comfort`` m or more from blocked cells, rising
    linearly to ``1 + penalty`` next to them (a costmap's inflation decay)."""
    open_floor = OccupancyGrid(np.zeros_like(grid.blocked), grid.origin, grid.resolution)
    clearance = distance_field(open_floor, grid.blocked)
    return 1.0 + penalty * np.clip((comfort - clearance) / comfort, 0.0, 1.0)


def geodesic(grid: OccupancyGrid, field: np.ndarray, x: float, y: float) -> float:
    """Smooth path length from (x, y): best over nearby cells of field + straight hop to it."""
    row, col = grid.cell(x, y)
    best = math.inf
    for r in range(max(row - 2, 0), min(row + 3, field.shape[0])):
        for c in range(max(col - 2, 0), min(col + 3, field.shape[1])):
            if np.isfinite(field[r, c]):
                px, py = grid.point(r, c)
                best = min(best, field[r, c] + math.hypot(px - x, py - y))
    return best


def downhill_path(grid: OccupancyGrid, field: np.ndarray, x: float, y: float,
                  cells: int) -> list[tuple[float, float]]:
    """Up to ``cells`` waypoints following ``field`` downhill from (x, y)."""
    row, col = _nearest_reachable(field, *grid.cell(x, y))
    path = [grid.point(row, col)]
    h, w = field.shape
    for _ in range(cells):
        if field[row, col] == 0.0:
            break
        options = [(field[row + dy, col + dx], row + dy, col + dx) for dy, dx in _NEIGHBOURS
                   if 0 <= row + dy < h and 0 <= col + dx < w]
        value, nrow, ncol = min(options)
        if not value < field[row, col]:
            break
        row, col = nrow, ncol
        path.append(grid.point(row, col))
    return path


def _nearest_reachable(field: np.ndarray, row: int, col: int) -> tuple[int, int]:
    """The cell itself if it has a finite distance, else the nearest one that does."""
    if np.isfinite(field[row, col]):
        return row, col
    rows, cols = np.nonzero(np.isfinite(field))
    if len(rows) == 0:
        return row, col
    nearest = int(np.argmin((rows - row) ** 2 + (cols - col) ** 2))
    return int(rows[nearest]), int(cols[nearest])
