"""The SQLite label store: add, undo, preferences, duplicates, restarts, concurrent writers."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from datetime import datetime, timezone

import pytest

from vla_gym.training.label_store import (
    CHOICES,
    DuplicateLabelError,
    Label,
    LabelError,
    LabelStore,
    UnknownQueryError,
)


@pytest.fixture
def store(tmp_path):
    with LabelStore(tmp_path / "labels.sqlite") as opened:
        yield opened


def _row_count(path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]


def test_add_returns_the_stored_label(store):
    label = store.add("q0", "left", "ana")
    assert isinstance(label, Label) and label.id >= 1
    assert (label.query_id, label.choice, label.labeller) == ("q0", "left", "ana")
    created = datetime.fromisoformat(label.created_at)
    assert created.tzinfo == timezone.utc
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 60
    assert store.labels() == [label]
    assert store.add("q1", "skip").labeller == "anonymous"


def test_invalid_input_writes_nothing(store):
    for query_id, choice, labeller in [("q0", "up", "ana"), ("q0", "LEFT", "ana"),
                                       ("", "left", "ana"), ("q0", "left", " "),
                                       ("q0", "left", "x" * 201), (3, "left", "ana")]:
        with pytest.raises(LabelError):
            store.add(query_id, choice, labeller)
    assert store.labels() == [] and _row_count(store.path) == 0


def test_duplicate_is_refused_until_undone(store):
    first = store.add("q0", "left", "ana")
    with pytest.raises(DuplicateLabelError, match="'ana' already labelled query 'q0'"):
        store.add("q0", "right", "ana")
    assert store.labels() == [first] and _row_count(store.path) == 1
    store.add("q0", "right", "ben")  # another person may label the same query
    assert store.undo("ana") == first
    assert store.add("q0", "right", "ana").choice == "right"


def test_undo_takes_back_the_latest_label_of_that_labeller_only(store):
    a0 = store.add("q0", "left", "ana")
    b0 = store.add("q0", "equal", "ben")
    a1 = store.add("q1", "skip", "ana")
    assert store.undo("ana") == a1
    assert store.undo("ana") == a0
    assert store.undo("ana") is None
    assert store.labels() == [b0]
    assert store.labels("ana") == []
    assert _row_count(store.path) == 3  # undo keeps history: rows are marked, not deleted


def test_preferences_average_over_labellers_and_leave_out_skips(store):
    store.add("q0", "left", "ana")
    store.add("q0", "equal", "ben")
    store.add("q1", "right", "ana")
    store.add("q2", "skip", "ana")
    store.add("q3", "skip", "ana")
    store.add("q3", "left", "ben")
    store.add("q4", "left", "ana")
    store.undo("ana")
    assert store.preferences() == {"q0": 0.75, "q1": 0.0, "q3": 1.0}
    assert store.labelled_ids() == {"q0", "q1", "q2", "q3"}
    assert store.labelled_ids("ana") == {"q0", "q1", "q2", "q3"}
    assert store.labelled_ids("ben") == {"q0", "q3"}


def test_store_restricted_to_known_queries(tmp_path):
    with LabelStore(tmp_path / "l.sqlite", query_ids=["q0", "q1"]) as store:
        with pytest.raises(UnknownQueryError, match="unknown query id 'q9'"):
            store.add("q9", "left", "ana")
        store.add("q1", "left", "ana")
        assert _row_count(store.path) == 1


def test_reopening_keeps_every_label(tmp_path):
    path = tmp_path / "labels.sqlite"
    with LabelStore(path) as store:
        given = [store.add(f"q{k}", CHOICES[k % 4], "ana") for k in range(5)]
        store.undo("ana")
    with LabelStore(path) as store:
        assert store.labels() == given[:4]
        assert store.undo("ana") == given[3]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_file_that_is_not_a_label_database_is_named(tmp_path):
    bad = tmp_path / "notes.sqlite"
    bad.write_text("these are not labels " * 100)
    with pytest.raises(LabelError, match="notes.sqlite is not a usable label database"):
        LabelStore(bad)
    with pytest.raises(LabelError, match="is a directory"):
        LabelStore(tmp_path)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE labels (x INTEGER)")
    with pytest.raises(LabelError, match="columns \\('x',\\)"):
        LabelStore(other)


def _write_many(path, labeller: str, n: int) -> None:
    with LabelStore(path) as store:
        for k in range(n):
            store.add(f"q{k}", CHOICES[k % 4], labeller)
            if k % 10 == 9:  # undo and redo now and then: writes interleave with updates
                undone = store.undo(labeller)
                store.add(undone.query_id, undone.choice, labeller)


def _assert_all_present(path, labellers: list[str], n: int) -> None:
    with LabelStore(path) as store:
        for labeller in labellers:
            labels = store.labels(labeller)
            assert sorted(label.query_id for label in labels) == sorted(f"q{k}" for k in range(n))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_threads_sharing_one_store_lose_nothing(tmp_path):
    path = tmp_path / "labels.sqlite"
    with LabelStore(path) as store:
        def work(labeller: str) -> None:
            for k in range(60):
                store.add(f"q{k}", "left", labeller)
        threads = [threading.Thread(target=work, args=(f"t{j}",)) for j in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    _assert_all_present(path, [f"t{j}" for j in range(4)], 60)


def test_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "labels.sqlite"
    LabelStore(path).close()
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_many, args=(path, f"p{j}", 150)) for j in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    _assert_all_present(path, ["p0", "p1", "p2"], 150)


def test_same_label_raced_from_two_processes_is_stored_once(tmp_path):
    path = tmp_path / "labels.sqlite"
    LabelStore(path).close()
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    results = context.Queue()

    def race() -> None:
        with LabelStore(path) as store:
            barrier.wait()
            try:
                store.add("q0", "left", "ana")
                results.put("stored")
            except DuplicateLabelError:
                results.put("duplicate")

    workers = [context.Process(target=race) for _ in range(4)]
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=30) for _ in workers)
    for worker in workers:
        worker.join(30)
    assert outcomes == ["duplicate"] * 3 + ["stored"]
    assert _row_count(path) == 1
