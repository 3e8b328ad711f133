"""The labelling HTTP API on a real server: labels, undo, bad requests, clips, restarts."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest
from label_helpers import ENV_ID, get_json, make_query_set, post_json, request, running_server
from typer.testing import CliRunner

from vla_gym.cli import app
from vla_gym.training.label_store import LabelStore
from vla_gym.training.labelling.server import make_labelling_server
from vla_gym.training.query_files import QueryFileError, read_manifest


@pytest.fixture(scope="module")
def queries(tmp_path_factory):
    directory = tmp_path_factory.mktemp("queries")
    make_query_set(directory, n_queries=3)
    return directory


@pytest.fixture
def server(queries, tmp_path):
    with running_server(queries, tmp_path / "labels.sqlite") as running:
        yield running


def _rows(server) -> int:
    with sqlite3.connect(server.app.store.path) as db:
        return db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]


def test_page_and_first_query(server):
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"id=\"choose-left\"" in body and b"labelled" in body
    status, data = get_json(server, "/api/next?labeller=ana")
    assert status == 200
    assert data["query"] == {"id": "q0", "instruction": "pick up the red block (0)", "number": 1,
                             "left": "/clips/0", "right": "/clips/1"}
    assert data["progress"] == {"labelled": 0, "total": 3}


def test_labels_advance_the_queue_per_labeller(server):
    status, data = post_json(server, "/api/label",
                             {"query_id": "q0", "choice": "left", "labeller": "ana"})
    assert status == 201
    assert data["label"]["choice"] == "left" and data["label"]["labeller"] == "ana"
    assert data["progress"] == {"labelled": 1, "total": 3}
    assert get_json(server, "/api/next?labeller=ana")[1]["query"]["id"] == "q1"
    assert get_json(server, "/api/next?labeller=ben")[1]["query"]["id"] == "q0"
    assert get_json(server, "/api/progress")[1] == {"labelled": 1, "total": 3}
    for query_id in ("q1", "q2"):
        assert post_json(server, "/api/label",
                         {"query_id": query_id, "choice": "skip", "labeller": "ana"})[0] == 201
    status, data = get_json(server, "/api/next?labeller=ana")
    assert data == {"query": None, "progress": {"labelled": 3, "total": 3}}


def test_undo_returns_the_query_to_show_again(server):
    post_json(server, "/api/label", {"query_id": "q0", "choice": "right", "labeller": "ana"})
    post_json(server, "/api/label", {"query_id": "q1", "choice": "equal", "labeller": "ana"})
    status, data = post_json(server, "/api/undo", {"labeller": "ana"})
    assert status == 200
    assert data["undone"]["query_id"] == "q1" and data["undone"]["choice"] == "equal"
    assert data["query"]["id"] == "q1" and data["progress"]["labelled"] == 1
    post_json(server, "/api/undo", {"labeller": "ana"})
    status, data = post_json(server, "/api/undo", {"labeller": "ana"})
    assert status == 200 and data["undone"] is None and data["query"] is None
    assert server.app.store.labels() == []


GOOD = {"query_id": "q0", "choice": "left", "labeller": "ana"}
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("body, headers, status, reason", [
    (b"{not json", JSON, 400, "not valid JSON"),
    (b"\xff\xfe", JSON, 400, "not valid JSON"),
    (b"[1, 2]", JSON, 400, "must be a JSON object"),
    (json.dumps({"query_id": "q0", "labeller": "ana"}).encode(), JSON, 400, "missing ['choice']"),
    (json.dumps({**GOOD, "extra": 1}).encode(), JSON, 400, "unexpected ['extra']"),
    (json.dumps({**GOOD, "query_id": 0}).encode(), JSON, 400, "'query_id' must be a str"),
    (json.dumps({**GOOD, "choice": "up"}).encode(), JSON, 400, "choice must be one of"),
    (json.dumps({**GOOD, "labeller": "  "}).encode(), JSON, 400, "labeller must be"),
    (json.dumps({**GOOD, "query_id": "q9"}).encode(), JSON, 404, "unknown query id 'q9'"),
    (json.dumps(GOOD).encode(), {"Content-Type": "text/plain"}, 415, "application/json"),
    (json.dumps({**GOOD, "pad": "x" * 20000}).encode(), JSON, 413, "at most"),
])
def test_malformed_label_posts_are_refused_and_write_nothing(server, body, headers, status,
                                                              reason):
    got, _, data = request(server, "POST", "/api/label", body, headers)
    assert got == status
    assert reason in json.loads(data)["error"]
    assert _rows(server) == 0


def test_duplicate_label_is_a_conflict(server):
    assert post_json(server, "/api/label", GOOD)[0] == 201
    status, data = post_json(server, "/api/label", {**GOOD, "choice": "right"})
    assert status == 409 and "already labelled" in data["error"]
    assert _rows(server) == 1
    assert server.app.store.labels()[0].choice == "left"


@pytest.mark.parametrize("method, path, payload, status", [
    ("GET", "/api/next", None, 400),
    ("GET", "/api/next?labeller=", None, 400),
    ("GET", "/api/label", None, 405),
    ("GET", "/api/nothing", None, 404),
    ("POST", "/api/nothing", {}, 404),
    ("POST", "/api/undo", {}, 400),
    ("POST", "/api/undo", {"labeller": ""}, 400),
    ("POST", "/api/undo", {"labeller": 3}, 400),
])
def test_bad_api_calls_get_a_reason(server, method, path, payload, status):
    body = None if payload is None else json.dumps(payload).encode()
    got, _, data = request(server, method, path, body, JSON if body else None)
    assert got == status and json.loads(data)["error"]
    assert _rows(server) == 0


def test_a_foreign_host_name_is_refused(server):
    status, _, data = request(server, "POST", "/api/label", json.dumps(GOOD).encode(),
                              {**JSON, "Host": "attacker.example:8765"})
    assert status == 403 and "Host" in json.loads(data)["error"]
    assert _rows(server) == 0


def test_clips_are_served_whole_and_by_range(server, queries):
    clip = (queries / "clips" / "1.mp4").read_bytes()
    status, headers, body = request(server, "GET", "/clips/1")
    assert status == 200 and headers["Content-Type"] == "video/mp4" and body == clip
    assert headers["Accept-Ranges"] == "bytes"
    status, headers, body = request(server, "GET", "/clips/1", headers={"Range": "bytes=10-19"})
    assert status == 206 and body == clip[10:20]
    assert headers["Content-Range"] == f"bytes 10-19/{len(clip)}"
    assert request(server, "GET", "/clips/1", headers={"Range": "bytes=-5"})[2] == clip[-5:]
    assert request(server, "GET", "/clips/1", headers={"Range": "bytes=4-"})[2] == clip[4:]
    assert request(server, "GET", "/clips/1",
                   headers={"Range": f"bytes={len(clip)}-"})[0] == 416


@pytest.mark.parametrize("path", ["/clips/6", "/clips/-1", "/clips/../queries.json",
                                  "/clips/%2e%2e/queries.json", "/clips/clips/0.mp4",
                                  "/queries.json", "//etc/passwd", "/clips/0/../../x"])
def test_only_manifest_clips_can_be_fetched(server, path):
    status, _, _ = request(server, "GET", path)
    assert status == 404


def test_restart_loses_no_label_and_resumes(queries, tmp_path):
    db = tmp_path / "labels.sqlite"
    with running_server(queries, db) as first:
        post_json(first, "/api/label", {"query_id": "q0", "choice": "left", "labeller": "ana"})
        post_json(first, "/api/label", {"query_id": "q1", "choice": "equal", "labeller": "ana"})
    with running_server(queries, db) as second:
        status, data = get_json(second, "/api/next?labeller=ana")
        assert data["query"]["id"] == "q2" and data["progress"]["labelled"] == 2
        assert post_json(second, "/api/undo", {"labeller": "ana"})[1]["undone"]["query_id"] == "q1"
    with LabelStore(db) as store:
        assert [(label.query_id, label.choice) for label in store.labels()] == [("q0", "left")]


def test_two_labellers_posting_at_once_keep_every_label(tmp_path):
    queries = tmp_path / "queries"
    make_query_set(queries, n_queries=25, with_clips=False)
    _touch_clips(queries)
    with running_server(queries, tmp_path / "labels.sqlite") as server:
        def label_all(labeller: str) -> None:
            for k in range(25):
                status, _ = post_json(server, "/api/label",
                                      {"query_id": f"q{k}", "choice": "right",
                                       "labeller": labeller})
                assert status == 201

        def race_same_label(results: list[int]) -> None:
            results.append(post_json(server, "/api/label",
                                     {"query_id": "q0", "choice": "left", "labeller": "eve"})[0])

        results: list[int] = []
        threads = [threading.Thread(target=label_all, args=(name,)) for name in ("ana", "ben")]
        threads += [threading.Thread(target=race_same_label, args=(results,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(results) == [201, 409, 409]
        assert get_json(server, "/api/progress?labeller=ana")[1] == {"labelled": 25, "total": 25}
        assert _rows(server) == 51
    with sqlite3.connect(tmp_path / "labels.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _touch_clips(queries) -> None:
    # The API does not look inside clips: empty files stand in for them here.
    for clip in read_manifest(queries, check_clips=False).clip_paths():
        (queries / clip).parent.mkdir(parents=True, exist_ok=True)
        (queries / clip).touch()


def test_query_set_for_another_env_is_refused(queries, tmp_path):
    with pytest.raises(QueryFileError, match="not 'vla_gym/NavGoTo-v0'"):
        make_labelling_server(queries, tmp_path / "l.sqlite", port=0, env_id="vla_gym/NavGoTo-v0")
    server = make_labelling_server(queries, tmp_path / "l.sqlite", port=0, env_id=ENV_ID)
    server.server_close()


def test_binding_beyond_localhost_warns(queries, tmp_path):
    with pytest.warns(UserWarning, match="anyone who can reach this machine"):
        server = make_labelling_server(queries, tmp_path / "l.sqlite", host="0.0.0.0", port=0)
    assert server.url.startswith("http://0.0.0.0:")
    server.server_close()


def test_cli_errors_are_clean_with_exit_code_2(queries, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["label", "--queries", str(queries), "--db",
                                 str(tmp_path / "l.sqlite"), "--env", "vla_gym/NavGoTo-v0"])
    assert result.exit_code == 2 and "NavGoTo" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    result = runner.invoke(app, ["label", "--queries", str(tmp_path / "none"), "--db",
                                 str(tmp_path / "l.sqlite")])
    assert result.exit_code == 2 and "no query directory" in result.output
    (tmp_path / "bad.sqlite").write_text("not sqlite " * 200)
    result = runner.invoke(app, ["label", "--queries", str(queries), "--db",
                                 str(tmp_path / "bad.sqlite")])
    assert result.exit_code == 2 and "not a usable label database" in result.output


def _start_cli(queries, db) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "vla_gym.cli", "label", "--queries", str(queries),
               "--db", str(db), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "COLUMNS": "300"})
    for line in process.stdout:
        if match := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
            return process, match.group(1)
    process.kill()
    raise AssertionError(f"vla-gym label printed no URL (exit code {process.wait()})")


def _post_to_port(port: str, payload: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
    conn.request("POST", "/api/label", json.dumps(payload), JSON)
    status = conn.getresponse().status
    conn.close()
    return status


def test_killed_command_loses_no_label(queries, tmp_path):
    db = tmp_path / "labels.sqlite"
    process, port = _start_cli(queries, db)
    try:
        assert _post_to_port(port, {"query_id": "q0", "choice": "left", "labeller": "ana"}) == 201
        assert _post_to_port(port, {"query_id": "q1", "choice": "equal", "labeller": "ana"}) == 201
    finally:
        process.send_signal(signal.SIGKILL)  # no clean shutdown at all
        process.wait(10)
        process.stdout.close()
    with LabelStore(db) as store:
        assert [(label.query_id, label.choice) for label in store.labels()] == [
            ("q0", "left"), ("q1", "equal")]


def test_restarted_command_resumes_and_stops_cleanly_on_ctrl_c(queries, tmp_path):
    db = tmp_path / "labels.sqlite"
    with LabelStore(db) as store:
        store.add("q0", "right", "ana")
    process, port = _start_cli(queries, db)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
        conn.request("GET", "/api/next?labeller=ana")
        assert json.loads(conn.getresponse().read())["query"]["id"] == "q1"
        conn.close()
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=10)[0]
    assert process.returncode == 0
    assert "stopped; 1 label(s) in" in rest


def test_a_clip_removed_while_serving_is_a_404_and_a_failure_is_a_500(tmp_path, capsys):
    queries = tmp_path / "queries"
    make_query_set(queries, n_queries=1)
    with running_server(queries, tmp_path / "labels.sqlite") as server:
        (queries / "clips" / "0.mp4").unlink()
        status, _, data = request(server, "GET", "/clips/0")
        assert status == 404 and "clips/0.mp4 is missing" in json.loads(data)["error"]

        def broken(labeller=None):
            raise RuntimeError("disk on fire")

        server.app.store.labelled_ids = broken
        status, data = get_json(server, "/api/next?labeller=ana")
        assert status == 500 and "disk on fire" in data["error"]
    assert "disk on fire" in capsys.readouterr().err
