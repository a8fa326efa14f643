"""A campaign on disk: its folder, config, database and data root.

    <dir>/campaign.yaml        the resolved config of `saengine campaign create`
    <dir>/campaign.db          the SQLite database (WAL): images, queue, masks, events, ...
    <dir>/runs/                logs of the background jobs (embed, rounds) the server starts
    <data>/images/<key>.jpg    the stored images (EXIF applied, shortest side rule)
    <data>/embeddings/...      fp16 embeddings per model (engine.embeddings)
    <data>/models/<sha16>/     decoder.onnx (+ decoder.quant.onnx) per model version
    <data>/exports/            SA-1B exports (each round's, and `campaign export`'s)

<data> is the campaign folder unless the config names another location (`data=`: a shared
filesystem or an fsspec URL such as s3://bucket/campaign); the database stays in <dir>,
with the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from engine.campaigns.db import DB_FILE, Database, read_meta, write_meta
from engine.campaigns.errors import CampaignError
from engine.campaigns.state import CampaignMode, Stage, mode_named, stage_named
from engine.config import plain
from engine.embeddings import MODEL_DIR_CHARS, EmbeddingStore
from engine.storage import Storage

CONFIG_FILE = "campaign.yaml"
RUNS_DIR = "runs"
DETECTOR_META = "detector"


@dataclass(frozen=True)
class QueueSettings:
    """lease_ttl_s: seconds a lease lives without a heartbeat; max_image_skips: distinct
    annotators that may skip an image before it is set aside."""

    lease_ttl_s: float = 120.0
    max_image_skips: int = 2

    def __post_init__(self) -> None:
        if self.lease_ttl_s <= 0:
            raise ValueError(f"queue.lease_ttl_s must be > 0, got {self.lease_ttl_s}")
        if self.max_image_skips < 1:
            raise ValueError(f"queue.max_image_skips must be >= 1, got {self.max_image_skips}")


class Campaign:
    """Opens an existing campaign folder (its database upgraded to the current schema)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        config_path = self.dir / CONFIG_FILE
        if not config_path.is_file() or not (self.dir / DB_FILE).is_file():
            raise CampaignError(
                f"{self.dir} is not a campaign (create it with saengine campaign create)"
            )
        loaded = OmegaConf.load(config_path)
        assert isinstance(loaded, DictConfig)
        self.config: DictConfig = loaded
        self.db = Database(self.dir / DB_FILE)
        self.db.upgrade()
        self.storage = data_storage(self.dir, loaded)
        self.queue = QueueSettings(**plain(loaded.queue))
        self._embedding_owners: dict[str, str] = {}  # model versions never change

    @property
    def stage(self) -> Stage:
        """The stage the campaign was created in (its new images' stage)."""
        return stage_named(str(self.config.stage))

    @property
    def mode(self) -> CampaignMode:
        """What its people do: annotate (stages 1 and 2), audit or verify proposed masks."""
        return mode_named(str(self.config.get("mode", CampaignMode.ANNOTATE)))

    def image_path(self, key: str) -> str:
        return f"images/{key}.jpg"

    def decoder_path(self, model_sha256: str, *, quantized: bool = False) -> str:
        name = "decoder.quant.onnx" if quantized else "decoder.onnx"
        return f"models/{model_sha256[:MODEL_DIR_CHARS]}/{name}"

    def embeddings(self, model_sha256: str) -> EmbeddingStore:
        """The embedding files of a model version: its own, or those of the version whose
        image encoder it shares (`models.embeddings_sha256`). Not inside a transaction."""
        if model_sha256 not in self._embedding_owners:
            with self.db.read() as db:
                row = db.execute(
                    "SELECT embeddings_sha256 FROM models WHERE sha256 = ?", (model_sha256,)
                ).fetchone()
            if row is None:  # not a version (yet): its own folder
                return EmbeddingStore(self.storage, model_sha256)
            self._embedding_owners[model_sha256] = str(row["embeddings_sha256"] or model_sha256)
        return EmbeddingStore(self.storage, self._embedding_owners[model_sha256])

    def runs_dir(self) -> Path:
        path = self.dir / RUNS_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path


@contextlib.contextmanager
def exclusive(campaign: Campaign, job: str) -> Iterator[None]:
    """At most one `job` (embed, round, ...) per campaign at a time: an flock on
    <dir>/runs/<job>.lock, released when the process ends, however it ends."""
    with open(campaign.runs_dir() / f"{job}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise CampaignError(f"another {job} job is running on {campaign.dir}") from error
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


def data_storage(directory: Path, config: DictConfig) -> Storage:
    data = config.get("data")
    options: dict[str, Any] = plain(config.get("storage_options") or {})
    return Storage(str(data) if data else str(directory.resolve()), options)


def campaign_detector(campaign: Campaign) -> str | None:
    """The campaign's detector reference: set by `set-stage` or a detector round (the
    database), else the config's prefill.detector."""
    with campaign.db.read() as db:
        stored = read_meta(db, DETECTOR_META)
    if stored is not None:
        return stored
    configured = campaign.config.get("prefill", {}).get("detector")
    return str(configured) if configured else None


def set_campaign_detector(campaign: Campaign, reference: str) -> None:
    with campaign.db.write() as db:
        write_meta(db, DETECTOR_META, reference)
