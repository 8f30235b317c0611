"""Stored responses in an embedded SQLite database (a file, so they survive a restart; `:memory:`
for none), with a time-to-live and a cap on their number.

One row per response: the Response object, its input items (for /input_items) and its harmony
conversation (for `previous_response_id`), all as JSON text.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    response_json TEXT NOT NULL,
    input_items_json TEXT NOT NULL,
    conversation_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
"""


@dataclass(frozen=True)
class StoredResponse:
    response_json: str
    input_items_json: str
    conversation_json: str


class ResponseStoreError(RuntimeError):
    """The store cannot be used (file removed, read-only, corrupt, disk full); the message says
    which file and why, for the client."""


class ResponseStore:
    def __init__(self, path: str, *, ttl_seconds: float | None = None, max_responses: int | None = None) -> None:
        if path != ":memory:":
            path = str(Path(path).expanduser())
        self.path = path
        self.ttl_seconds = ttl_seconds
        self.max_responses = max_responses
        # Statements are short; one connection behind a lock serves the event loop and its threads.
        self._lock = threading.Lock()
        self._file_identity: tuple[int, int] | None = None
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            if path != ":memory:":
                self._file_identity = _identity(path)
        except (OSError, sqlite3.Error) as error:
            raise ResponseStoreError(f"The response store {path} cannot be opened: {error}.") from None

    @contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """The connection, after checking that its file is still the one opened: SQLite keeps
        writing to a deleted file without complaint, and everything written there is lost."""
        with self._lock:
            if self._file_identity is not None:
                try:
                    current = _identity(self.path)
                except OSError:
                    current = None
                if current != self._file_identity:
                    raise ResponseStoreError(
                        f"The response store file {self.path} was removed or replaced while the server "
                        "was running; stored responses are unavailable until the server restarts.")
            try:
                yield self._db
            except sqlite3.Error as error:
                raise ResponseStoreError(f"The response store {self.path} failed: {error}.") from None

    def save(self, response_id: str, created_at: float, response_json: str, input_items_json: str,
             conversation_json: str) -> None:
        with self._using() as db:
            db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                       (response_id, created_at, response_json, input_items_json, conversation_json))
            self._evict(db)

    def get(self, response_id: str) -> StoredResponse | None:
        with self._using() as db:
            self._evict(db)
            row = db.execute("SELECT response_json, input_items_json, conversation_json FROM responses "
                             "WHERE id = ?", (response_id,)).fetchone()
        return StoredResponse(*row) if row else None

    def delete(self, response_id: str) -> bool:
        with self._using() as db:
            return db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

    def count(self) -> int:
        with self._using() as db:
            return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def _evict(self, db: sqlite3.Connection) -> None:
        if self.ttl_seconds is not None:
            db.execute("DELETE FROM responses WHERE created_at < ?", (time.time() - self.ttl_seconds,))
        if self.max_responses is not None:
            db.execute("DELETE FROM responses WHERE id IN (SELECT id FROM responses ORDER BY created_at DESC "
                       "LIMIT -1 OFFSET ?)", (self.max_responses,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _identity(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino
