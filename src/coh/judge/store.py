"""Votes in SQLite: comparisons, voters, votes.

Several people vote at once through a threaded web server, so every call opens its own
connection; the database runs in WAL mode (readers never block the writer) with
``synchronous=FULL`` (a vote acknowledged to the browser survives a crash or power loss), and
every write is one ``BEGIN IMMEDIATE`` transaction, retried by SQLite's busy timeout while
another writer holds the lock. A vote is unique per (comparison, voter), so a retried request
can never count twice.

A comparison holds one prompt and the outputs of two systems, ``a`` and ``b`` in name order.
Which one a voter sees on the left is drawn per (voter, comparison) from a keyed hash, so the
page never learns the systems and a reload shows the same layout. Each voter's current
comparison is remembered, so a person who comes back finds the one they left.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import sqlite3
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

CHOICES = ("a", "b", "tie", "neither")
MAX_NAME = 64
MAX_COMMENT = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS comparisons (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    prompt_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    system_a TEXT NOT NULL,
    system_b TEXT NOT NULL,
    output_a TEXT NOT NULL,
    output_b TEXT NOT NULL,
    CHECK (system_a < system_b)
);
CREATE TABLE IF NOT EXISTS voters (
    id INTEGER PRIMARY KEY,
    name_key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY,
    comparison_id INTEGER NOT NULL REFERENCES comparisons(id),
    voter_id INTEGER NOT NULL REFERENCES voters(id),
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'neither')),
    left_side TEXT NOT NULL CHECK (left_side IN ('a', 'b')),
    comment TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL,
    UNIQUE (comparison_id, voter_id)
);
CREATE INDEX IF NOT EXISTS votes_by_voter ON votes (voter_id);
CREATE TABLE IF NOT EXISTS current (
    voter_id INTEGER PRIMARY KEY REFERENCES voters(id),
    comparison_id INTEGER NOT NULL REFERENCES comparisons(id)
);
"""


class VoteConflict(ValueError):
    """The voter already voted on this comparison, differently."""


@dataclass(frozen=True)
class Comparison:
    """One prompt (a list of ``{"role", "content"}`` messages) and two systems' outputs."""

    id: int
    prompt_id: str
    prompt: list[dict]
    system_a: str
    system_b: str
    output_a: str
    output_b: str


@dataclass(frozen=True)
class Voter:
    id: int
    name: str


@dataclass(frozen=True)
class Vote:
    """A vote with its comparison: ``choice`` is ``a``, ``b``, ``tie`` or ``neither``;
    ``left_side`` the system shown on the left; ``created`` ISO 8601 UTC."""

    comparison: Comparison
    voter_id: int
    voter_name: str
    choice: str
    left_side: str
    comment: str
    created: str


def normalize_name(name: str) -> str:
    """A voter's name as stored: NFKC, single spaces, at most ``MAX_NAME`` characters, no control
    characters. Raises ValueError otherwise."""
    text = " ".join(unicodedata.normalize("NFKC", name).split())
    if not text:
        raise ValueError("name: give a name (it identifies your votes when you come back)")
    if len(text) > MAX_NAME:
        raise ValueError(f"name: at most {MAX_NAME} characters, got {len(text)}")
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise ValueError("name: control or invisible characters are not allowed")
    return text


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


_OURS = {"meta", "comparisons", "voters", "votes"}  # a database holding these is one of ours (tables added later are made)


class JudgeStore:
    """The votes database at ``path`` (created with its schema when missing or empty). A file that
    is not SQLite, or an SQLite database of something else, is refused with a ValueError and left
    as it was."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        if self.path.is_dir():
            raise ValueError(f"{self.path}: a folder, not a votes database file")
        blocking = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise ValueError(f"{self.path}: {blocking} is a file, not a folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                foreign = bool(tables) and not _OURS.issubset(tables)
                if not foreign:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(_SCHEMA)
                    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('secret', ?)", (secrets.token_hex(32),))
                    secret = db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()[0]
        except sqlite3.DatabaseError as e:  # "file is not a database", "unable to open database file", ...
            raise ValueError(f"{self.path}: cannot be used as a votes database: {e}") from None
        if foreign:
            raise ValueError(f"{self.path}: an SQLite database, but not one of coh judge (its tables: "
                             f"{', '.join(sorted(tables)[:8])}); give the votes database `coh judge serve` made, "
                             "or a new file")
        try:
            self.secret = bytes.fromhex(secret)
        except (TypeError, ValueError):
            raise ValueError(f"{self.path}: not a coh judge votes database (its secret is unreadable)") from None

    # -- connections --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=FULL")
            db.create_function("coh_rank", 2, self._rank, deterministic=True)
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; the lock is taken at the start, so reads inside it are current."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _hash(self, *parts: object) -> int:
        msg = "\x1f".join(map(str, parts)).encode()
        return int.from_bytes(hmac.new(self.secret, msg, hashlib.sha256).digest()[:8], "big")

    def _rank(self, voter_id: int, comparison_id: int) -> int:
        """A voter's own random order of the comparisons (SQLite integers are signed 64-bit)."""
        return self._hash("order", voter_id, comparison_id) >> 1

    def left_side(self, voter_id: int, comparison_id: int) -> str:
        """Which system (``a``/``b``) this voter sees on the left of this comparison."""
        return "ab"[self._hash("side", voter_id, comparison_id) & 1]

    def voter_hash(self, voter_id: int) -> str:
        """A stable pseudonym for exports: keyed by this database's secret, so names cannot be
        recovered by hashing guesses."""
        return f"{self._hash('voter', voter_id):016x}"

    # -- comparisons --------------------------------------------------------------------------
    def add_comparisons(self, rows: list[tuple[str, list[dict], dict[str, str]]]) -> dict[str, int]:
        """Store ``(prompt_id, prompt messages, {system: output})`` rows, one comparison per pair
        of systems. Idempotent: a comparison already stored with the same content is left alone;
        one stored with other content is an error. Pairs of identical outputs are not stored
        (nothing to judge, and no preference can come of them). Returns the counts ``added``,
        ``existing`` and ``identical``."""
        added = existing = identical = 0
        with self._write() as db:
            for prompt_id, prompt, outputs in rows:
                names = sorted(outputs)
                for i, sa in enumerate(names):
                    for sb in names[i + 1 :]:
                        if outputs[sa] == outputs[sb]:
                            identical += 1
                            continue
                        key = json.dumps([prompt_id, sa, sb], ensure_ascii=False)
                        values = (prompt_id, json.dumps(prompt, ensure_ascii=False), sa, sb, outputs[sa], outputs[sb])
                        found = db.execute("SELECT prompt_id, prompt, system_a, system_b, output_a, output_b "
                                           "FROM comparisons WHERE key = ?", (key,)).fetchone()
                        if found is None:
                            db.execute("INSERT INTO comparisons (key, prompt_id, prompt, system_a, system_b, output_a, "
                                       "output_b) VALUES (?, ?, ?, ?, ?, ?, ?)", (key, *values))
                            added += 1
                        elif tuple(found) == values:
                            existing += 1
                        else:
                            raise ValueError(f"{self.path}: comparison of prompt '{prompt_id}' between '{sa}' and "
                                             f"'{sb}' is already stored with other text; votes refer to it, so use "
                                             "a new --db for new outputs")
        return {"added": added, "existing": existing, "identical": identical}

    def count_comparisons(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0]

    @staticmethod
    def _comparison(row: tuple) -> Comparison:
        cid, prompt_id, prompt, sa, sb, oa, ob = row
        return Comparison(cid, prompt_id, json.loads(prompt), sa, sb, oa, ob)

    _COLUMNS = "c.id, c.prompt_id, c.prompt, c.system_a, c.system_b, c.output_a, c.output_b"

    def comparison(self, comparison_id: int) -> Comparison | None:
        with self._connect() as db:
            row = db.execute(f"SELECT {self._COLUMNS} FROM comparisons c WHERE c.id = ?", (comparison_id,)).fetchone()
        return None if row is None else self._comparison(row)

    # -- voters -------------------------------------------------------------------------------
    def voter(self, name: str) -> Voter:
        """The voter of this name (compared case-insensitively), created on first use."""
        name = normalize_name(name)
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO voters (name_key, name, created) VALUES (?, ?, ?)",
                       (name.casefold(), name, _now()))
            vid, stored = db.execute("SELECT id, name FROM voters WHERE name_key = ?", (name.casefold(),)).fetchone()
        return Voter(vid, stored)

    def voter_by_id(self, voter_id: int) -> Voter | None:
        with self._connect() as db:
            row = db.execute("SELECT id, name FROM voters WHERE id = ?", (voter_id,)).fetchone()
        return None if row is None else Voter(*row)

    # -- voting -------------------------------------------------------------------------------
    def next_comparison(self, voter_id: int, max_votes: int | None = None) -> Comparison | None:
        """The comparison this voter should see: the one shown last if still unanswered, else a
        new one they have not voted on, preferring comparisons with the fewest votes (so coverage
        grows evenly) in the voter's own random order. None when nothing is left for them.
        ``max_votes``: comparisons with that many votes are no longer handed out."""
        with self._write() as db:
            row = db.execute(
                f"SELECT {self._COLUMNS} FROM current k JOIN comparisons c ON c.id = k.comparison_id "
                "WHERE k.voter_id = ? AND NOT EXISTS "
                "(SELECT 1 FROM votes v WHERE v.comparison_id = c.id AND v.voter_id = k.voter_id)",
                (voter_id,)).fetchone()
            if row is None:
                counted = ("(SELECT COUNT(*) FROM votes v WHERE v.comparison_id = c.id)")
                limit = f"AND {counted} < ?" if max_votes is not None else ""
                row = db.execute(
                    f"SELECT {self._COLUMNS} FROM comparisons c WHERE NOT EXISTS "
                    f"(SELECT 1 FROM votes v WHERE v.comparison_id = c.id AND v.voter_id = ?) {limit} "
                    f"ORDER BY {counted}, coh_rank(?, c.id) LIMIT 1",
                    (voter_id, *((max_votes,) if max_votes is not None else ()), voter_id)).fetchone()
                if row is None:
                    db.execute("DELETE FROM current WHERE voter_id = ?", (voter_id,))
                    return None
                db.execute("INSERT OR REPLACE INTO current (voter_id, comparison_id) VALUES (?, ?)", (voter_id, row[0]))
        return self._comparison(row)

    def record_vote(self, voter_id: int, comparison_id: int, choice: str, comment: str = "") -> bool:
        """Store a vote (``choice`` in terms of systems: ``a``, ``b``, ``tie``, ``neither``).
        Returns True when stored, False when this exact vote was already there (a retried
        request). Raises VoteConflict when the voter voted otherwise before, KeyError for an
        unknown comparison, ValueError for a bad choice or comment."""
        if choice not in CHOICES:
            raise ValueError(f"choice: expected one of {list(CHOICES)}, got {choice!r}")
        comment = comment.strip()
        if len(comment) > MAX_COMMENT:
            raise ValueError(f"comment: at most {MAX_COMMENT} characters, got {len(comment)}")
        with self._write() as db:
            if db.execute("SELECT 1 FROM comparisons WHERE id = ?", (comparison_id,)).fetchone() is None:
                raise KeyError(f"no comparison {comparison_id}")
            cur = db.execute(
                "INSERT INTO votes (comparison_id, voter_id, choice, left_side, comment, created) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (comparison_id, voter_id) DO NOTHING",
                (comparison_id, voter_id, choice, self.left_side(voter_id, comparison_id), comment, _now()))
            if cur.rowcount == 1:
                return True
            before = db.execute("SELECT choice, comment FROM votes WHERE comparison_id = ? AND voter_id = ?",
                                (comparison_id, voter_id)).fetchone()
        if tuple(before) != (choice, comment):
            raise VoteConflict(f"you already voted on comparison {comparison_id} ({before[0]}); votes are final")
        return False

    def progress(self, voter_id: int, max_votes: int | None = None) -> dict[str, int]:
        """``voted`` by this voter, and ``total`` they can vote on (with ``max_votes``, the
        comparisons that are not yet full, plus those they voted on)."""
        with self._connect() as db:
            voted = db.execute("SELECT COUNT(*) FROM votes WHERE voter_id = ?", (voter_id,)).fetchone()[0]
            if max_votes is None:
                total = db.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0]
            else:
                open_ = db.execute(
                    "SELECT COUNT(*) FROM comparisons c WHERE (SELECT COUNT(*) FROM votes v WHERE "
                    "v.comparison_id = c.id) < ? AND NOT EXISTS (SELECT 1 FROM votes v WHERE "
                    "v.comparison_id = c.id AND v.voter_id = ?)", (max_votes, voter_id)).fetchone()[0]
                total = voted + open_
        return {"voted": voted, "total": total}

    def votes(self) -> list[Vote]:
        """Every vote with its comparison, oldest first."""
        with self._connect() as db:
            rows = db.execute(
                f"SELECT {self._COLUMNS}, v.voter_id, w.name, v.choice, v.left_side, v.comment, v.created "
                "FROM votes v JOIN comparisons c ON c.id = v.comparison_id JOIN voters w ON w.id = v.voter_id "
                "ORDER BY v.id").fetchall()
        return [Vote(self._comparison(r[:7]), *r[7:]) for r in rows]
