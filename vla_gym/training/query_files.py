"""Preference query sets on disk: which two clips are compared, under which instruction.

A query set is a directory::

    DIR/queries.json    the manifest (this module): env id, segment length, the queries
    DIR/clips/*.mp4     one clip per segment shown to a labeller
    DIR/segments.npz    the segments' observations/actions, row i = segment i (reward model side)

A query asks "which of these two segments does better at the instruction?". Each side names a
row of ``segments.npz`` (what the reward model trains on) and the clip a person watches. The
same manifest feeds the web labelling page and the oracle labeller, so both read this format.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

FORMAT = "vla_gym.queries/1"
MANIFEST_NAME = "queries.json"


class QueryFileError(ValueError):
    """A query directory or manifest that cannot be used; the message names the file."""


@dataclass(frozen=True)
class ClipRef:
    segment: int  # row index into the query set's segments.npz arrays
    clip: str  # path of an mp4 relative to the query directory, "/"-separated


@dataclass(frozen=True)
class Query:
    id: str
    instruction: str
    left: ClipRef
    right: ClipRef


@dataclass
class QueryManifest:
    env_id: str
    segment_length: int
    queries: list[Query]
    meta: dict[str, Any] = field(default_factory=dict)

    def clip_paths(self) -> list[str]:
        """Every clip the queries name, each once, in first-use order."""
        seen: dict[str, None] = {}
        for query in self.queries:
            seen.setdefault(query.left.clip)
            seen.setdefault(query.right.clip)
        return list(seen)

    def query(self, query_id: str) -> Query:
        for query in self.queries:
            if query.id == query_id:
                return query
        raise KeyError(query_id)


def manifest_path(directory: str | Path) -> Path:
    return Path(directory) / MANIFEST_NAME


def write_manifest(directory: str | Path, manifest: QueryManifest) -> Path:
    """Write ``DIR/queries.json`` atomically (a kill leaves the old file or the new, never half).

    The manifest is checked as ``read_manifest`` would check it (clips aside), so what is written
    can always be read back."""
    path = manifest_path(directory)
    payload = _to_json(manifest)
    _parse(payload, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)
    return path


def read_manifest(directory: str | Path, *, env_id: str | None = None,
                  check_clips: bool = True) -> QueryManifest:
    """Load and check ``DIR/queries.json``.

    ``env_id``: the env the caller works with; a manifest made for another env is refused.
    ``check_clips``: every clip named must exist as a file inside ``DIR``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise QueryFileError(f"no query directory at {directory} (expected a directory holding "
                             f"{MANIFEST_NAME} and clips/)")
    path = manifest_path(directory)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise QueryFileError(f"{path} does not exist: {directory} is not a query set") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise QueryFileError(f"cannot read {path} as JSON: {exc}") from None
    manifest = _parse(payload, path)
    if env_id is not None and manifest.env_id != env_id:
        raise QueryFileError(f"{path} holds queries for env {manifest.env_id!r}, not {env_id!r}")
    if check_clips:
        _check_clips_exist(manifest, directory, path)
    return manifest


def _to_json(manifest: QueryManifest) -> dict[str, Any]:
    def side(ref: ClipRef) -> dict[str, Any]:
        return {"segment": ref.segment, "clip": ref.clip}

    return {
        "format": FORMAT,
        "env_id": manifest.env_id,
        "segment_length": manifest.segment_length,
        "meta": manifest.meta,
        "queries": [{"id": q.id, "instruction": q.instruction, "left": side(q.left),
                     "right": side(q.right)} for q in manifest.queries],
    }


def _parse(payload: Any, path: Path) -> QueryManifest:
    if not isinstance(payload, dict):
        raise QueryFileError(f"{path} must hold a JSON object, found {type(payload).__name__}")
    if payload.get("format") != FORMAT:
        raise QueryFileError(f"{path}: expected \"format\": {FORMAT!r}, "
                             f"found {payload.get('format')!r}")
    env_id = _field(payload, "env_id", str, path)
    segment_length = _field(payload, "segment_length", int, path)
    if not env_id or segment_length < 1:
        raise QueryFileError(f"{path}: expected a non-empty env_id and segment_length >= 1, "
                             f"found {env_id!r} and {segment_length}")
    meta = payload.get("meta", {})
    if not isinstance(meta, dict):
        raise QueryFileError(f"{path}: \"meta\" must be an object, found {type(meta).__name__}")
    raw_queries = _field(payload, "queries", list, path)
    queries = [_parse_query(raw, f"{path}: queries[{k}]") for k, raw in enumerate(raw_queries)]
    _check_unique_ids(queries, path)
    return QueryManifest(env_id=env_id, segment_length=segment_length, queries=queries,
                         meta=meta)


def _parse_query(raw: Any, where: str) -> Query:
    if not isinstance(raw, dict):
        raise QueryFileError(f"{where} must be an object, found {type(raw).__name__}")
    query_id = _field(raw, "id", str, where)
    if not query_id:
        raise QueryFileError(f"{where}: \"id\" must be a non-empty string")
    return Query(id=query_id, instruction=_field(raw, "instruction", str, where),
                 left=_parse_side(raw, "left", where), right=_parse_side(raw, "right", where))


def _parse_side(raw: dict[str, Any], side: str, where: str) -> ClipRef:
    ref = _field(raw, side, dict, where)
    where = f"{where}.{side}"
    segment = _field(ref, "segment", int, where)
    if segment < 0:
        raise QueryFileError(f"{where}: \"segment\" must be >= 0, found {segment}")
    clip = _field(ref, "clip", str, where)
    _check_clip_path(clip, where)
    return ClipRef(segment=segment, clip=clip)


def _field(raw: dict[str, Any], name: str, kind: type, where: str | Path) -> Any:
    if name not in raw:
        raise QueryFileError(f"{where}: missing field {name!r} ({kind.__name__})")
    value = raw[name]
    # bool is an int to Python, never a valid segment index or length
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise QueryFileError(f"{where}: field {name!r} must be {kind.__name__}, "
                             f"found {type(value).__name__} {value!r}")
    return value


def _check_clip_path(clip: str, where: str) -> None:
    # Clips must stay inside the query directory: the labelling server serves them by this path.
    parts = PurePosixPath(clip).parts
    if not clip or "\\" in clip or clip.startswith("/") or ".." in parts or ":" in clip:
        raise QueryFileError(f"{where}: \"clip\" must be a relative path inside the query "
                             f"directory such as 'clips/0.mp4', found {clip!r}")


def _check_unique_ids(queries: list[Query], path: Path) -> None:
    counts = Counter(q.id for q in queries)
    duplicates = sorted(query_id for query_id, n in counts.items() if n > 1)
    if duplicates:
        raise QueryFileError(f"{path}: duplicate query ids {duplicates[:10]}")


def _check_clips_exist(manifest: QueryManifest, directory: Path, path: Path) -> None:
    missing = [clip for clip in manifest.clip_paths() if not (directory / clip).is_file()]
    if missing:
        raise QueryFileError(f"{path}: {len(missing)} clip file(s) missing under {directory}, "
                             f"e.g. {missing[:3]}")
