"""Observation keys, action contracts and shared constants.

Everything that must mean the same thing in simulation and on a real robot lives here, as data,
so the sim2real layer reads the very objects the envs declare.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# Observation keys (sim and real alike).
IMAGE = "image"
WRIST_IMAGE = "wrist_image"
TOP_IMAGE = "top_image"  # navigation: optional overhead view
INSTRUCTION = "instruction"
STATE = "state"
# Image observation keys and the env camera that fills each (``cameras=`` env kwarg).
CAMERA_OF_VIEW = {IMAGE: "main", WRIST_IMAGE: "wrist", TOP_IMAGE: "top"}


def pixel_label(view: str) -> str:
    """The info key holding where the instructed target appears in image ``view`` ((column,
    row) in [0, 1]; NaN behind the camera): ``target_pixel`` for the main camera,
    ``wrist_target_pixel`` for the wrist camera's ``wrist_image``, and so on."""
    return _view_label(view, "target_pixel")


def _view_label(view: str, name: str) -> str:
    """``name`` for the main camera's ``image``, ``<camera>_<name>`` for the other views."""
    if view not in CAMERA_OF_VIEW:
        raise ValueError(f"unknown image key {view!r}; expected one of {list(CAMERA_OF_VIEW)}")
    return name if view == IMAGE else f"{CAMERA_OF_VIEW[view]}_{name}"


# Exploration (``vla_gym.training.rft``): a world point (B, 3) per observation, NaN where none,
# that pulls a policy's calibrated target maps toward where it appears in each view, so the
# policy goes for that object instead of the one its maps favour. Not an env observation.
FOCUS = "focus_point"


def shift_key(view: str) -> str:
    """The training-batch key of how far augmentation moved each of ``view``'s images'
    content, (B, 2) (column, row) fractions of the image."""
    return f"{view}_shift"


def landmark_label(view: str) -> str:
    """The info key holding where the instruction's landmark appears in image ``view``: the
    object a spatial relation names the target by ("the cube left of *the bowl*"), or the
    target itself when the instruction names it without a relation. ``landmark_pixel`` for the
    main camera, ``wrist_landmark_pixel`` for the wrist camera, and so on."""
    return _view_label(view, "landmark_pixel")


def anchor_map_key(view: str) -> str:
    """The training-batch key of a reference policy's target-map logits (B, cells) on view
    ``view``'s frames: ``anchor_target_map``, ``wrist_anchor_target_map``, ... (RL fine-tuning
    keeps a policy's maps near its BC policy's with them)."""
    return _view_label(view, "anchor_target_map")


PIXEL_LABELS = tuple(pixel_label(view) for view in CAMERA_OF_VIEW)
LANDMARK_LABELS = tuple(landmark_label(view) for view in CAMERA_OF_VIEW)

DEFAULT_IMAGE_SIZE = 96
MAX_INSTRUCTION_LENGTH = 256
# gymnasium's Text default charset is alphanumeric only; instructions need spaces and punctuation.
# A str, not a set: vector envs encode characters by their index in this sequence, and a set's
# order changes with each process's hash seed.
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " ,.'-?!"

RenderQuality = Literal["fast", "high"]
ObsMode = Literal["rgb", "state"]
InstructionSplit = Literal["train", "test", "all"]
RENDER_QUALITIES: tuple[str, ...] = ("fast", "high")
OBS_MODES: tuple[str, ...] = ("rgb", "state")
INSTRUCTION_SPLITS: tuple[str, ...] = ("train", "test", "all")


@dataclass(frozen=True)
class ActionContract:
    """What each dimension of a normalised action in [-1, 1] means physically.

    ``scale[i]`` is the physical amount (in ``units[i]``) commanded by an action of 1.0 on
    dimension ``i``; for ``mode == "delta"`` that amount is applied per env step.
    """

    name: str
    dims: tuple[str, ...]
    units: tuple[str, ...]
    scale: tuple[float, ...]
    mode: Literal["delta", "velocity", "absolute"]
    frame: str
    notes: dict[str, str] = field(default_factory=dict)
    # Largest change per second of each physical command (e.g. m/s^2 for a velocity), or None
    # where the robot applies commands as given. Sim and robot-side safety layer share it.
    rate_limit: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not (len(self.dims) == len(self.units) == len(self.scale)):
            raise ValueError(
                f"ActionContract {self.name!r}: dims, units and scale must have equal lengths, "
                f"got {len(self.dims)}, {len(self.units)}, {len(self.scale)}"
            )
        if self.rate_limit is not None and len(self.rate_limit) != len(self.dims):
            raise ValueError(
                f"ActionContract {self.name!r}: rate_limit needs one value per dim "
                f"({len(self.dims)}), got {len(self.rate_limit)}"
            )

    @property
    def dim(self) -> int:
        return len(self.dims)

    @property
    def grip_index(self) -> int | None:
        """Where the action holds the gripper command, or None for robots without one."""
        return self.dims.index("grip") if "grip" in self.dims else None

    @property
    def low(self) -> np.ndarray:
        return -np.ones(self.dim, dtype=np.float32)

    @property
    def high(self) -> np.ndarray:
        return np.ones(self.dim, dtype=np.float32)

    def to_physical(self, action: np.ndarray) -> np.ndarray:
        """Normalised action (clipped to [-1, 1]) -> physical units."""
        clipped = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        return clipped * np.asarray(self.scale)

    def describe(self) -> str:
        parts = [f"{d}[{s:g} {u}]" for d, u, s in zip(self.dims, self.units, self.scale)]
        return f"{self.mode} in {self.frame}: " + ", ".join(parts)


# End-effector delta per step in the robot base frame (OpenVLA / RT-1 convention).
# Gripper is an absolute command: +1 closes fully, -1 opens fully.
ARM_EE_DELTA = ActionContract(
    name="arm_ee_delta",
    dims=("dx", "dy", "dz", "droll", "dpitch", "dyaw", "grip"),
    units=("m", "m", "m", "rad", "rad", "rad", "1"),
    scale=(0.01, 0.01, 0.01, 0.05, 0.05, 0.05, 1.0),
    mode="delta",
    frame="robot_base",
    notes={
        "grip": "absolute: +1 = close, -1 = open, in between = partial opening",
        "clipping": "actions outside [-1, 1] are clipped; NaN/inf raise ValueError",
    },
)

# Differential-drive base: [v, omega] scaled to the declared maximum speeds, reached under
# the acceleration limits of a small indoor base (the sim applies them; so does the ROS 2
# safety layer before publishing geometry_msgs/Twist on cmd_vel).
BASE_VELOCITY = ActionContract(
    name="base_velocity",
    dims=("v", "omega"),
    units=("m/s", "rad/s"),
    scale=(0.5, 1.5),
    mode="velocity",
    frame="base_link",
    notes={
        "clipping": "actions outside [-1, 1] are clipped; NaN/inf raise ValueError",
        "rate_limit": "commanded velocities change by at most 1.0 m/s^2 and 3.0 rad/s^2",
    },
    rate_limit=(1.0, 3.0),
)

# What each entry of the proprioceptive ``state`` is, per robot (keyed by its action contract).
# ``gripper_velocity`` is how fast the gripper opening changes (m/s, negative while closing).
ARM_STATE_FIELDS: tuple[str, ...] = (
    *(f"q{i}" for i in range(1, 7)), *(f"dq{i}" for i in range(1, 7)), "gripper_opening",
    "ee_x", "ee_y", "ee_z", "ee_qw", "ee_qx", "ee_qy", "ee_qz", "gripper_velocity",
)
BASE_STATE_FIELDS: tuple[str, ...] = ("x", "y", "yaw", "v", "omega")
STATE_FIELDS: dict[str, tuple[str, ...]] = {
    ARM_EE_DELTA.name: ARM_STATE_FIELDS,
    BASE_VELOCITY.name: BASE_STATE_FIELDS,
}
# The velocities a cloned policy leaves out by default (BCConfig.state_velocities): they mostly
# echo the previous command, which a policy then copies. The gripper's velocity is not among
# them: it is what tells that the fingers have settled on an object, the moment a grasp turns
# into a lift (the scripted expert lifts then), and no other entry shows it.
VELOCITY_FIELDS = frozenset({*(f"dq{i}" for i in range(1, 7)), "v", "omega"})


def state_indices_without_velocities(contract: ActionContract, state_dim: int
                                     ) -> tuple[int, ...]:
    """Indices of the state entries of ``contract``'s robot that are not velocities."""
    fields = STATE_FIELDS[contract.name]
    if state_dim != len(fields):
        raise ValueError(f"a {contract.name} robot's state has {len(fields)} entries {fields}, "
                         f"got {state_dim}")
    return tuple(i for i, name in enumerate(fields) if name not in VELOCITY_FIELDS)
