"""Preference labels in SQLite: who chose what, when, committed the moment they are given.

One row per label. Undo marks a row undone instead of deleting it, so the file keeps the whole
history of a labelling session; every query only ever counts live rows. A partial unique index
allows one live label per (query, labeller), which makes a duplicate impossible even when two
processes post the same label at once. WAL mode lets readers and a writer work side by side;
each write is one short ``BEGIN IMMEDIATE`` transaction, and a busy timeout makes concurrent
writers wait for each other instead of failing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

CHOICES = ("left", "right", "equal", "skip")
# Probability that the LEFT clip is preferred, per choice; skips carry no preference.
LEFT_PREFERENCE = {"left": 1.0, "right": 0.0, "equal": 0.5}
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0
MAX_NAME_LENGTH = 200

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN {CHOICES!r}),
    labeller TEXT NOT NULL,
    created_at TEXT NOT NULL,
    undone_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS one_live_label_per_labeller
    ON labels (query_id, labeller) WHERE undone_at IS NULL;
CREATE INDEX IF NOT EXISTS labels_by_labeller ON labels (labeller, id);
"""
_COLUMNS = ("id", "query_id", "choice", "labeller", "created_at", "undone_at")
_LIVE = "undone_at IS NULL"


class LabelError(ValueError):
    """A label that cannot be stored (bad choice, unknown query, bad name) or a bad store."""


class DuplicateLabelError(LabelError):
    """The labeller already has a live label for this query."""


class UnknownQueryError(LabelError):
    """The query id is not one of the queries this store was opened for."""


@dataclass(frozen=True)
class Label:
    id: int
    query_id: str
    choice: str
    labeller: str
    created_at: str  # ISO-8601, UTC


class LabelStore:
    """Labels in the SQLite file ``path`` (created with its schema if new).

    ``query_ids``: when given, labels for any other query id are refused (``UnknownQueryError``).
    One connection, shared by the threads of one process under a lock; other processes open
    their own store on the same file."""

    def __init__(self, path: str | Path, query_ids: Iterable[str] | None = None) -> None:
        self.path = Path(path)
        self.query_ids = None if query_ids is None else frozenset(query_ids)
        self._lock = threading.Lock()
        self._db = _connect(self.path)
        try:
            _ensure_schema(self._db, self.path)
        except BaseException:
            self._db.close()
            raise

    def add(self, query_id: str, choice: str, labeller: str = "anonymous") -> Label:
        """Store one label now; nothing is written when it is refused."""
        self._check(query_id, choice, labeller)
        created_at = _utc_now()
        try:
            with self._lock, _transaction(self._db):
                cursor = self._db.execute(
                    "INSERT INTO labels (query_id, choice, labeller, created_at) "
                    "VALUES (?, ?, ?, ?)", (query_id, choice, labeller, created_at))
        except sqlite3.IntegrityError:
            raise DuplicateLabelError(f"{labeller!r} already labelled query {query_id!r}; "
                                      "undo it first to change it") from None
        return Label(int(cursor.lastrowid or 0), query_id, choice, labeller, created_at)

    def undo(self, labeller: str) -> Label | None:
        """Mark ``labeller``'s most recent live label undone and return it (None: nothing left)."""
        with self._lock, _transaction(self._db):
            row = self._db.execute(
                f"SELECT {', '.join(_COLUMNS[:5])} FROM labels WHERE labeller = ? AND {_LIVE} "
                "ORDER BY id DESC LIMIT 1", (labeller,)).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE labels SET undone_at = ? WHERE id = ?", (_utc_now(), row[0]))
        return Label(*row)

    def labels(self, labeller: str | None = None) -> list[Label]:
        """Live labels in the order they were given, of everyone or of one labeller."""
        where, params = _labeller_filter(labeller)
        rows = self._read(f"SELECT {', '.join(_COLUMNS[:5])} FROM labels WHERE {_LIVE}{where} "
                          "ORDER BY id", params)
        return [Label(*row) for row in rows]

    def preferences(self) -> dict[str, float]:
        """query id -> probability that the LEFT clip is preferred (left 1, right 0, equal 0.5),
        averaged over labellers; queries with only skips are absent."""
        cases = " ".join(f"WHEN '{choice}' THEN {value}"
                         for choice, value in LEFT_PREFERENCE.items())
        rows = self._read(f"SELECT query_id, AVG(CASE choice {cases} END) FROM labels "
                          f"WHERE {_LIVE} AND choice != 'skip' GROUP BY query_id ORDER BY "
                          "MIN(id)", ())
        return {query_id: float(p) for query_id, p in rows}

    def labelled_ids(self, labeller: str | None = None) -> set[str]:
        """Query ids with a live label (skips included), of everyone or of one labeller."""
        where, params = _labeller_filter(labeller)
        rows = self._read(f"SELECT DISTINCT query_id FROM labels WHERE {_LIVE}{where}", params)
        return {row[0] for row in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _check(self, query_id: str, choice: str, labeller: str) -> None:
        if choice not in CHOICES:
            raise LabelError(f"choice must be one of {CHOICES}, got {choice!r}")
        for name, value in (("query_id", query_id), ("labeller", labeller)):
            if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LENGTH:
                raise LabelError(f"{name} must be a non-empty string of at most "
                                 f"{MAX_NAME_LENGTH} characters, got {value!r}")
        if self.query_ids is not None and query_id not in self.query_ids:
            raise UnknownQueryError(f"unknown query id {query_id!r}: not in this query set")


def _connect(path: Path) -> sqlite3.Connection:
    if path.is_dir():
        raise LabelError(f"{path} is a directory, expected an SQLite file for the labels")
    try:
        # isolation_level=None: no implicit transactions; writes open their own, below.
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                             check_same_thread=False)
    except sqlite3.Error as exc:
        raise LabelError(f"cannot open label database {path}: {exc}") from None
    db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return db


def _ensure_schema(db: sqlite3.Connection, path: Path) -> None:
    try:
        db.execute("PRAGMA journal_mode = WAL")
        # FULL: a label is on disk when add() returns, even if the machine then loses power.
        db.execute("PRAGMA synchronous = FULL")
        with _transaction(db):
            _check_existing_schema(db, path)
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.DatabaseError as exc:
        raise LabelError(f"{path} is not a usable label database: {exc}") from None


def _check_existing_schema(db: sqlite3.Connection, path: Path) -> None:
    """Refuse a file whose labels were written by another schema, rather than mix them."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        raise LabelError(f"{path} has label schema version {version}; this version of "
                         f"vla_gym reads version {SCHEMA_VERSION}")
    columns = tuple(row[1] for row in db.execute("PRAGMA table_info(labels)"))
    if columns and columns != _COLUMNS:
        raise LabelError(f"{path} has a 'labels' table with columns {columns}, "
                         f"expected {_COLUMNS}")


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): takes the write lock up front,
    so two writers queue on the busy timeout instead of deadlocking on lock upgrades."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _labeller_filter(labeller: str | None) -> tuple[str, tuple]:
    return ("", ()) if labeller is None else (" AND labeller = ?", (labeller,))


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
