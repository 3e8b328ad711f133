"""Checkpoint io: ``config.json`` + ``model.safetensors`` (+ ``tokenizer/`` for HF tokenizers).

A checkpoint is self-contained: pretrained encoders are saved as their HF config plus their
weights inside ``model.safetensors``, so loading needs neither the original path nor a hub.
Loading is all-or-nothing: a missing file, unreadable JSON, an unknown config key, a config
that does not match the weights (names or shapes) or a corrupt tensor file raises
:class:`CheckpointError` naming the problem; no policy is returned half-loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vla_gym.policies._optional import require
from vla_gym.policies.configuration import VLAConfig

if TYPE_CHECKING:
    from vla_gym.policies.policy import VLAPolicy

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
FORMAT = "vla_gym.VLAPolicy"
# Config fields that decide the architecture; config.json must agree with the weights on them.
ARCHITECTURE = ("vision", "language", "fusion", "head", "aux", "finetune", "action",
                "state_dim", "use_state", "hidden")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is; the message says why."""


def _portable_config(policy: VLAPolicy, root: Path) -> VLAConfig:
    """The policy's config with pretrained encoders replaced by their HF configs."""
    config = policy.config
    vision: Any = policy.trunk.vision
    if hasattr(vision, "hf_model"):
        config = config.replace(vision={"pretrained": None,
                                        "hf_config": vision.hf_model.config.to_dict()})
    language: Any = policy.trunk.language
    if hasattr(language, "hf_model"):
        tokenizer = "hashed"
        if language.hf_tokenizer is not None:
            language.hf_tokenizer.save_pretrained(str(root / TOKENIZER_DIR))
            tokenizer = f"./{TOKENIZER_DIR}"
        config = config.replace(language={"pretrained": None, "tokenizer": tokenizer,
                                          "hf_config": language.hf_model.config.to_dict()})
    return config


def save_policy(policy: VLAPolicy, root: Path) -> Path:
    if policy.is_quantized:
        raise CheckpointError("an int8-quantised policy cannot be saved; save the float policy "
                              "and quantise after loading (vla_gym.policies.quantize_int8)")
    st = require("safetensors.torch")
    root.mkdir(parents=True, exist_ok=True)
    config = _portable_config(policy, root)
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True, default=_json_default)
    (root / CONFIG_NAME).write_text(text)
    arch = json.dumps(_architecture(config.to_dict()), sort_keys=True, default=_json_default)
    st.save_model(policy, str(root / WEIGHTS_NAME),
                  metadata={"format": FORMAT, "architecture": arch})
    return root


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    raise TypeError(f"cannot write {type(value).__name__} to config.json")


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in ARCHITECTURE}


def read_config(root: Path) -> VLAConfig:
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {str(root)!r} does not exist")
    path = root / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{str(root)!r} has no {CONFIG_NAME}; expected a directory "
                              f"written by VLAPolicy.save_pretrained")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    try:
        return VLAConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid VLAPolicy config: {exc}") from exc


def read_weights(root: Path, config: VLAConfig) -> dict[str, torch.Tensor]:
    path = root / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{str(root)!r} has no {WEIGHTS_NAME}")
    st = require("safetensors")
    try:
        with st.safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} is corrupt or not a safetensors file: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} was not written by VLAPolicy.save_pretrained "
                              f"(format {metadata.get('format')!r})")
    _check_architecture(metadata, config, path)
    return tensors


def _check_architecture(metadata: dict[str, str], config: VLAConfig, path: Path) -> None:
    saved = _with_defaults(json.loads(metadata.get("architecture", "{}")), config)
    current = json.loads(json.dumps(_architecture(config.to_dict()), default=_json_default))
    changed = sorted(k for k in ARCHITECTURE if saved.get(k) != current.get(k))
    if changed:
        raise CheckpointError(f"{CONFIG_NAME} does not match the weights in {path}: field(s) "
                              f"{changed} differ from the config the weights were saved with")


def _with_defaults(saved: dict[str, Any], config: VLAConfig) -> dict[str, Any]:
    """The saved architecture with the defaults of fields added since it was written (an
    older checkpoint's ``fusion`` has no ``landmark_map``: it was built without one), so that
    only a real difference refuses the weights."""
    try:
        filled = VLAConfig.from_dict({**config.to_dict(), **saved}).to_dict()
    except (TypeError, ValueError):  # not a config this version reads: compare as saved
        return saved
    return json.loads(json.dumps(_architecture(filled), default=_json_default))


def _fill_aliases(policy: VLAPolicy, tensors: dict[str, torch.Tensor]) -> None:
    """Add names that share storage with a saved tensor (safetensors stores one of them)."""
    by_ptr: dict[int, list[str]] = {}
    for name, value in policy.state_dict().items():
        by_ptr.setdefault(value.data_ptr(), []).append(name)
    for names in by_ptr.values():
        present = [n for n in names if n in tensors]
        for name in names:
            if present and name not in tensors:
                tensors[name] = tensors[present[0]]


def load_into(policy: VLAPolicy, tensors: dict[str, torch.Tensor], source: str) -> None:
    _fill_aliases(policy, tensors)
    expected = policy.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
                   for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s), e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[:5]}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[:5]}")
    if problems:
        raise CheckpointError(f"weights in {source} do not fit the config: " + "; ".join(problems))
    policy.load_state_dict(tensors, strict=True)


def load_policy(cls: type[VLAPolicy], root: Path) -> VLAPolicy:
    config = read_config(root)
    tensors = read_weights(root, config)
    try:
        policy = cls(config, base_dir=root)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot build the policy described by {root / CONFIG_NAME}: "
                              f"{exc}") from exc
    load_into(policy, tensors, str(root / WEIGHTS_NAME))
    return policy.eval()

