"""Query manifests: round trip, and every way a query directory can be wrong."""

from __future__ import annotations

import json

import pytest
from label_helpers import ENV_ID, make_manifest, make_query_set

from vla_gym.training.query_files import (
    FORMAT,
    MANIFEST_NAME,
    ClipRef,
    Query,
    QueryFileError,
    read_manifest,
    write_manifest,
)


def test_round_trip_keeps_every_field(tmp_path):
    written = make_query_set(tmp_path, n_queries=3)
    payload = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert payload["format"] == FORMAT
    read = read_manifest(tmp_path, env_id=ENV_ID)
    assert read == written
    assert read.queries[1].left == ClipRef(2, "clips/2.mp4")
    assert read.clip_paths() == [f"clips/{k}.mp4" for k in range(6)]
    assert read.query("q2").instruction == "pick up the red block (2)"


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path):
    make_query_set(tmp_path, n_queries=1, with_clips=False)
    write_manifest(tmp_path, make_manifest(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME]
    assert len(read_manifest(tmp_path, check_clips=False).queries) == 2


def test_write_refuses_what_could_not_be_read_back(tmp_path):
    manifest = make_manifest(2)
    manifest.queries.append(manifest.queries[0])
    with pytest.raises(QueryFileError, match="duplicate query ids"):
        write_manifest(tmp_path, manifest)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_missing_directory_and_missing_manifest(tmp_path):
    with pytest.raises(QueryFileError, match="no query directory"):
        read_manifest(tmp_path / "absent")
    with pytest.raises(QueryFileError, match=f"{MANIFEST_NAME} does not exist"):
        read_manifest(tmp_path)


def test_invalid_json_names_the_file(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(QueryFileError, match=f"cannot read .*{MANIFEST_NAME} as JSON"):
        read_manifest(tmp_path)


def test_wrong_env_is_refused(tmp_path):
    make_query_set(tmp_path, n_queries=1)
    with pytest.raises(QueryFileError, match="for env 'vla_gym/TabletopPick-v0', not 'other'"):
        read_manifest(tmp_path, env_id="other")


def test_missing_clip_is_named_unless_not_checked(tmp_path):
    make_query_set(tmp_path, n_queries=2)
    (tmp_path / "clips" / "3.mp4").unlink()
    with pytest.raises(QueryFileError, match=r"1 clip file\(s\) missing .*clips/3.mp4"):
        read_manifest(tmp_path)
    assert len(read_manifest(tmp_path, check_clips=False).queries) == 2


def _valid_payload() -> dict:
    return {"format": FORMAT, "env_id": ENV_ID, "segment_length": 4, "meta": {},
            "queries": [{"id": "a", "instruction": "push",
                         "left": {"segment": 0, "clip": "clips/0.mp4"},
                         "right": {"segment": 1, "clip": "clips/1.mp4"}}]}


def _set(payload: dict, dotted: str, value) -> dict:
    keys = [int(key) if key.isdigit() else key for key in dotted.split(".")]
    node = payload
    for key in keys[:-1]:
        node = node[key]
    last = keys[-1]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return payload


_DELETE = object()


@pytest.mark.parametrize("dotted, value, message", [
    ("format", "vla_gym.queries/0", "expected \"format\""),
    ("format", _DELETE, "expected \"format\""),
    ("env_id", _DELETE, "missing field 'env_id'"),
    ("env_id", 3, "field 'env_id' must be str"),
    ("env_id", "", "non-empty env_id"),
    ("segment_length", 0, "segment_length >= 1"),
    ("segment_length", True, "field 'segment_length' must be int"),
    ("meta", [], "\"meta\" must be an object"),
    ("queries", {}, "field 'queries' must be list"),
    ("queries.0", "a", r"queries\[0\] must be an object"),
    ("queries.0.id", "", "non-empty string"),
    ("queries.0.id", 7, "field 'id' must be str"),
    ("queries.0.instruction", _DELETE, "missing field 'instruction'"),
    ("queries.0.left", _DELETE, "missing field 'left'"),
    ("queries.0.right.segment", -1, "must be >= 0"),
    ("queries.0.right.segment", 1.0, "field 'segment' must be int"),
    ("queries.0.left.clip", "../secret.mp4", "relative path inside"),
    ("queries.0.left.clip", "/etc/passwd", "relative path inside"),
])
def test_each_malformed_field_is_named(tmp_path, dotted, value, message):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(_set(_valid_payload(), dotted, value)))
    with pytest.raises(QueryFileError, match=message):
        read_manifest(tmp_path, check_clips=False)


def test_not_an_object_and_duplicate_ids(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("[]")
    with pytest.raises(QueryFileError, match="must hold a JSON object, found list"):
        read_manifest(tmp_path)
    payload = _valid_payload()
    payload["queries"].append(dict(payload["queries"][0]))
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(payload))
    with pytest.raises(QueryFileError, match=r"duplicate query ids \['a'\]"):
        read_manifest(tmp_path, check_clips=False)


def test_query_error_is_a_value_error():
    assert issubclass(QueryFileError, ValueError)
    assert Query("a", "b", ClipRef(0, "x"), ClipRef(1, "y")).left.segment == 0
