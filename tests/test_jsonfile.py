"""The shared JSON report writer: parents made, non-JSON values as str, nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vla_gym.jsonfile import write_json


def test_write_json_makes_parents_and_replaces_whole_files(tmp_path):
    path = tmp_path / "a" / "b" / "report.json"
    assert write_json(path, {"run": Path("runs/x"), "rate": np.float32(0.5)}) == path
    assert json.loads(path.read_text()) == {"run": "runs/x", "rate": "0.5"}
    write_json(path, {"second": 2})
    assert json.loads(path.read_text()) == {"second": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # no temp file
