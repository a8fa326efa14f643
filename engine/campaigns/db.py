"""The campaign database: SQLite in WAL mode, one file beside the campaign's config.

Every write is one short `BEGIN IMMEDIATE` transaction (the writer lock is taken up front,
so two writers never deadlock upgrading a read), committed with synchronous=FULL: once a
call returns, its rows survive a kill -9 of the process or a power cut. Each thread gets its
own connection (the server answers requests on a thread pool).

Schema versions: `SCHEMA` is version 1; each of `MIGRATIONS` brings the database to the
next version. A new database runs both (so it is the same as an upgraded one); opening an
older one applies the missing migrations in order, one transaction each, recording each
version in the meta table; a database from a newer release is refused.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from engine.campaigns.errors import CampaignError
from engine.campaigns.state import (
    ClientAction,
    EventKind,
    ImageStatus,
    MaskOrigin,
    MaskState,
    Role,
    RoundStatus,
    Verdict,
)

DB_FILE = "campaign.db"
BUSY_TIMEOUT_MS = 30_000
VERSION_KEY = "schema_version"


def _one_of(names: type[Enum]) -> str:
    return " | ".join(str(member.value) for member in names)


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

CREATE TABLE IF NOT EXISTS images (
    image_id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    stage INTEGER NOT NULL DEFAULT 1,  -- engine.campaigns.state.Stage: 1 assisted, 2 semi
    status TEXT NOT NULL,            -- {_one_of(ImageStatus)}
    error TEXT NOT NULL DEFAULT '',
    width INTEGER NOT NULL DEFAULT 0,
    height INTEGER NOT NULL DEFAULT 0,
    lease_id TEXT UNIQUE,
    lease_annotator INTEGER,
    lease_expires REAL,
    lease_started REAL,
    finished_by INTEGER,
    finished_at REAL,
    prefill_model TEXT               -- stage 2: the models that prefilled it (once)
);
CREATE INDEX IF NOT EXISTS images_queue ON images (status, image_id);

CREATE TABLE IF NOT EXISTS annotators (
    annotator_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,              -- {_one_of(Role)}
    token_sha256 TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS models (
    version INTEGER PRIMARY KEY,     -- 0: the campaign's first model, then one per promotion
    sha256 TEXT NOT NULL UNIQUE,     -- of the weights (engine.models.weights_sha256)
    config TEXT NOT NULL,            -- the model config (JSON) the embed job instantiates
    round TEXT,                      -- the registry round that produced it
    created REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS embeddings (
    image_id INTEGER NOT NULL,
    model_sha256 TEXT NOT NULL,
    input_h INTEGER NOT NULL,
    input_w INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (image_id, model_sha256)
);

CREATE TABLE IF NOT EXISTS masks (
    mask_id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL,
    annotator_id INTEGER,
    client_id TEXT,
    origin TEXT NOT NULL,            -- {_one_of(MaskOrigin)}
    state TEXT NOT NULL,             -- {_one_of(MaskState)}
    counts TEXT NOT NULL,            -- COCO compressed RLE at the stored image size
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    bbox TEXT NOT NULL,              -- [x, y, w, h], SA-1B semantics
    area INTEGER NOT NULL,
    prompts TEXT NOT NULL,           -- {{"points": [[x, y, label], ...], "box": [x0, y0, x1, y1]}}
    clicks INTEGER NOT NULL DEFAULT 0,
    brush_strokes INTEGER NOT NULL DEFAULT 0,
    seconds REAL NOT NULL DEFAULT 0,
    predicted_iou REAL,
    stability_score REAL,
    detector_score REAL,
    model_sha256 TEXT NOT NULL,
    detector_sha256 TEXT,
    created REAL NOT NULL,
    changed REAL NOT NULL,
    UNIQUE (annotator_id, client_id)
);
CREATE INDEX IF NOT EXISTS masks_image ON masks (image_id);

CREATE TABLE IF NOT EXISTS events (
    event_id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,              -- {_one_of(EventKind)}
    image_id INTEGER,
    annotator_id INTEGER,
    client_id TEXT,
    seconds REAL,
    clicks INTEGER,
    detail TEXT NOT NULL DEFAULT '{{}}',
    created REAL NOT NULL,
    UNIQUE (annotator_id, client_id)
);
CREATE INDEX IF NOT EXISTS events_image ON events (image_id, kind);

CREATE TABLE IF NOT EXISTS rounds (
    round_id INTEGER PRIMARY KEY,
    name TEXT,
    status TEXT NOT NULL,            -- {_one_of(RoundStatus)}
    mask_cutoff INTEGER NOT NULL,    -- masks with mask_id <= cutoff were exported for it
    started REAL NOT NULL,
    finished REAL,
    promoted INTEGER,
    detail TEXT NOT NULL DEFAULT '{{}}'
);
"""


@dataclass(frozen=True)
class Migration:
    """What brings a database of version `version - 1` to `version`."""

    version: int
    summary: str
    statements: tuple[str, ...]


MIGRATIONS = (
    Migration(
        2,
        "the images waiting for their prefill found by index (queue.WAITING: asked by the "
        "server's supervisor every 2 s, the prefill job and empty lease answers), not by "
        "walking every queued image",
        ("CREATE INDEX IF NOT EXISTS images_waiting ON images (status, stage, prefill_model)",),
    ),
    Migration(
        3,
        "a client id names one action: the client_actions table holds, per annotator and "
        "client id, the action, a digest of its body and what it stored (reusing the id for "
        "another action or body is refused); filled from the client ids masks and events hold",
        (
            f"""CREATE TABLE IF NOT EXISTS client_actions (
                annotator_id INTEGER NOT NULL,
                client_id TEXT NOT NULL,
                action TEXT NOT NULL,     -- {_one_of(ClientAction)}
                body_sha256 TEXT,         -- NULL: recorded before version 3 (any body)
                result_id INTEGER,        -- the mask (submit_mask), event (skip_object) or image
                created REAL NOT NULL,
                PRIMARY KEY (annotator_id, client_id)
            )""",
            "INSERT OR IGNORE INTO client_actions (annotator_id, client_id, action, result_id, "
            f"created) SELECT annotator_id, client_id, '{ClientAction.SUBMIT_MASK}', mask_id, "
            "created FROM masks WHERE annotator_id IS NOT NULL AND client_id IS NOT NULL",
            "INSERT OR IGNORE INTO client_actions (annotator_id, client_id, action, result_id, "
            "created) SELECT annotator_id, client_id, kind, CASE kind WHEN "
            f"'{EventKind.SKIP_OBJECT}' THEN event_id ELSE image_id END, created FROM events "
            "WHERE annotator_id IS NOT NULL AND client_id IS NOT NULL",
        ),
    ),
    Migration(
        4,
        "reviews of proposed masks (audit and verify modes): each answer with who gave it (a "
        "person, or the verifier model with its score) and its seconds; a corrected mask's "
        "link to the proposed mask it replaces; a dataset mask's annotation id",
        (
            "ALTER TABLE masks ADD COLUMN corrects INTEGER",  # audit: the prefilled mask replaced
            "ALTER TABLE masks ADD COLUMN annotation_id INTEGER",  # its id in the source dataset
            f"""CREATE TABLE IF NOT EXISTS reviews (
    review_id INTEGER PRIMARY KEY,
    mask_id INTEGER NOT NULL UNIQUE,  -- the proposed (prefilled) mask answered, once
    image_id INTEGER NOT NULL,
    annotator_id INTEGER,             -- the person; NULL when the verifier model answered
    client_id TEXT,
    verdict TEXT NOT NULL,            -- {_one_of(Verdict)}
    missing INTEGER NOT NULL DEFAULT 0,  -- "something is missing here"
    seconds REAL,                     -- from the mask shown to the answer
    verifier_sha256 TEXT,             -- the verifier file that answered
    score REAL,                       -- its score
    created REAL NOT NULL,
    UNIQUE (annotator_id, client_id)
)""",
            "CREATE INDEX IF NOT EXISTS reviews_image ON reviews (image_id)",
        ),
    ),
    Migration(
        5,
        "boxes imported from a label file (`campaign create labels=`): box prompts waiting "
        "for SAM in the prefill job, one row per box (XYXY in the stored image's pixels)",
        (
            "CREATE TABLE IF NOT EXISTS label_boxes (image_id INTEGER NOT NULL, "
            "box TEXT NOT NULL, label TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS label_boxes_image ON label_boxes (image_id)",
        ),
    ),
    Migration(
        6,
        "a model version with its parent's image encoder (a decoder round's) keeps its "
        "parent's embeddings: models.encoder_sha256 (of the image encoder's weights) and "
        "models.embeddings_sha256 (the version whose embedding files it reads; NULL: its own)",
        (
            "ALTER TABLE models ADD COLUMN encoder_sha256 TEXT",
            "ALTER TABLE models ADD COLUMN embeddings_sha256 TEXT",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


class Database:
    """The campaign's SQLite file; `read()` and `write()` give a connection in a
    transaction (write: BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA foreign_keys=ON")
            self._local.connection = connection
        return connection

    def create_schema(self) -> None:
        """A new database at the current version (one transaction)."""
        with self.write() as db:
            for statement in _statements(SCHEMA):
                db.execute(statement)
            for migration in MIGRATIONS:
                for statement in migration.statements:
                    db.execute(statement)
            if read_meta(db, VERSION_KEY) is None:
                write_meta(db, VERSION_KEY, str(SCHEMA_VERSION))

    def upgrade(self) -> None:
        """Bring the database to SCHEMA_VERSION: the migrations it lacks, in order, one
        transaction each. CampaignError for a database of a newer release or without a
        version."""
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise CampaignError(
                f"{self.path} was made by a newer release of saengine (schema version "
                f"{version}; this one knows versions up to {SCHEMA_VERSION}): upgrade saengine"
            )
        for migration in MIGRATIONS:
            if migration.version > version:
                self._apply(migration)

    def schema_version(self) -> int:
        """The version the meta table records; CampaignError when there is none."""
        try:
            with self.read() as db:
                value = read_meta(db, VERSION_KEY)
        except sqlite3.DatabaseError as error:
            raise CampaignError(f"{self.path} is not a campaign database ({error})") from error
        if value is None or not value.isdigit():
            raise CampaignError(
                f"{self.path} has no schema version: not a database made by "
                "saengine campaign create"
            )
        return int(value)

    def _apply(self, migration: Migration) -> None:
        with self.write() as db:
            stored = read_meta(db, VERSION_KEY)
            if stored is not None and int(stored) >= migration.version:
                return  # another process applied it meanwhile
            for statement in migration.statements:
                db.execute(statement)
            write_meta(db, VERSION_KEY, str(migration.version))

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        connection = self.connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several queries."""
        connection = self.connection()
        connection.execute("BEGIN")
        try:
            yield connection
        finally:
            connection.execute("COMMIT")

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def read_meta(db: sqlite3.Connection, key: str) -> str | None:
    """A value of the meta table (None when unset, or when there is no meta table)."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:  # no meta table: not a campaign database
        return None
    return None if row is None else str(row["value"])


def write_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _statements(script: str) -> list[str]:
    """A script's statements, each run with `execute` (`executescript` would commit the
    transaction it runs in)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return statements


def now() -> float:
    return time.time()
