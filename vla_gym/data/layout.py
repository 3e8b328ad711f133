"""Where a demo dataset lives on disk, and the errors that name a bad one.

``--out ROOT`` is a Minari datasets root (what ``MINARI_DATASETS_PATH`` points at). A collection
for env ``vla_gym/TabletopPick-v0`` writes the dataset ``vla_gym/TabletopPick/expert-v0``::

    ROOT/vla_gym/TabletopPick/expert-v0/
        data/metadata.json        Minari metadata (spaces, env spec, counts) + "vla_gym" params
        data/<j>/part-0.parquet   episode j (seed S + j), one Parquet file
        data/<j>/metadata.json    episode j's metadata (seed, success, task, target, instruction)
        .pending/<j>/             finished episodes waiting for an earlier one (num_envs > 1)

so ``MINARI_DATASETS_PATH=ROOT`` + ``minari.load_dataset("vla_gym/TabletopPick/expert-v0")``
opens it, as does ``minari.MinariDataset("ROOT/vla_gym/TabletopPick/expert-v0/data")``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DATASET_NAME = "expert"
DATASET_VERSION = 0
PENDING = ".pending"
METADATA = "metadata.json"
PARAMS_KEY = "vla_gym"  # our collection parameters inside Minari's metadata.json


class DatasetNotFoundError(FileNotFoundError):
    """No demo dataset at the given path."""


class CorruptDatasetError(ValueError):
    """A dataset directory exists but cannot be read as a Minari dataset."""


class DatasetLockedError(RuntimeError):
    """Another process is collecting into the same dataset."""


class IncompatibleDatasetError(ValueError):
    """A dataset does not match an env, or a resumed collection's parameters."""


def dataset_id(env_id: str) -> str:
    """Minari dataset id for expert demos of ``env_id``: ``vla_gym/TabletopPick/expert-v0``."""
    namespace, _, name = env_id.rpartition("/")
    base = name.rsplit("-v", 1)[0] if "-v" in name else name
    prefix = f"{namespace}/" if namespace else ""
    return f"{prefix}{base}/{DATASET_NAME}-v{DATASET_VERSION}"


def dataset_dir(root: str | Path, env_id: str) -> Path:
    """The dataset directory (the one holding ``data/``) for ``env_id`` under ``root``, as an
    absolute path: Minari's size bookkeeping joins the paths it globs under a dataset onto the
    dataset's own path again, which doubles a relative one (``--out runs/demos`` failed with
    FileNotFoundError after the first episode)."""
    return Path(root).absolute() / dataset_id(env_id)


def episode_dirs(folder: Path) -> dict[int, Path]:
    """Complete episodes in ``folder``: subdirectories named by an integer (they appear by
    atomic rename, so a name is never a half-written episode)."""
    if not folder.is_dir():
        return {}
    return {int(p.name): p for p in folder.iterdir() if p.name.isdigit() and p.is_dir()}


def read_json(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptDatasetError(f"cannot read {path}: {exc}") from None
    if not isinstance(payload, dict):
        raise CorruptDatasetError(f"{path} does not hold a JSON object")
    return payload


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``path`` so that a kill at any moment leaves the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, set):
        return sorted(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def resolve_data_path(path: str | Path) -> Path:
    """The Minari ``data/`` folder for ``path``: a ``--out`` root holding one dataset, a dataset
    directory, or the ``data/`` folder itself. Clear errors name the path."""
    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"no demo dataset at {path}: the path does not exist")
    for candidate in (path, path / "data"):
        if (candidate / METADATA).is_file() and candidate.name == "data":
            return candidate
    found = sorted(p.parent for pattern in ("*/*/data/" + METADATA, "*/*/*/data/" + METADATA)
                   for p in path.glob(pattern)
                   if not any(part.startswith(".") for part in p.relative_to(path).parts))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        ids = [str(p.parent.relative_to(path)) for p in found]
        raise DatasetNotFoundError(
            f"{path} holds several datasets {ids}; pass one of their directories")
    if (path / "data").is_dir() or path.name == "data":
        raise CorruptDatasetError(f"{path} has no readable data/{METADATA} (incomplete or "
                                  "damaged dataset)")
    raise DatasetNotFoundError(f"no demo dataset at {path}: expected data/{METADATA} there or "
                               f"under <namespace>/<env>/{DATASET_NAME}-v<k>/")
