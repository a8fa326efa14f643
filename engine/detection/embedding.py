"""Computing the embeddings the detector needs: in this process (small data) or on Ray model
actors that each load the SAM once and write what they compute straight to the store."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.detection.data import Embedder, PendingEmbedding, decode_rgb
from engine.embeddings import EmbeddingStore, embed_image
from engine.images import DecodedImage
from engine.storage import Storage
from engine.workers.decode import Failure
from engine.workers.model import ModelWorker
from engine.workers.pool import Resources, run_bounded, start_model_workers
from model import Sam, SamPredictor


def in_process_embedder(sam: Sam) -> Embedder:
    """Embeds with the given SAM in this process."""
    predictor = SamPredictor(sam)

    def run(items: Iterable[PendingEmbedding], store: EmbeddingStore) -> int:
        count = 0
        for item in items:
            store.write(item.digest, embed_image(predictor, decode_rgb(item)).array)
            count += 1
        predictor.reset_image()
        return count

    return run


class EmbeddingWriter(ModelWorker):
    """A model worker that writes each embedding it computes straight to the store of
    `storage_root` for the SAM of SHA-256 `sam_weights_sha256`."""

    def __init__(
        self,
        *,
        storage_root: str,
        storage_options: dict[str, Any],
        sam_weights_sha256: str,
        **worker: Any,
    ) -> None:
        super().__init__(**worker)
        self.store = EmbeddingStore(Storage(storage_root, storage_options), sam_weights_sha256)

    def write(self, item: PendingEmbedding) -> str:
        result = self.embed(DecodedImage(jpeg=item.data, rgb=decode_rgb(item)))
        if isinstance(result, Failure):
            raise ValueError(f"image {item.digest[:12]}: {result.message}")
        self.store.write(item.digest, result.array)
        return item.digest


def ray_embedder(
    *,
    model_config: dict[str, Any],
    actors: int,
    cpus_per_actor: float = 1,
    gpus_per_actor: float = 0,
    device: str = "auto",
) -> Embedder:
    """Embeds on `actors` Ray actors (on the Ray that is initialized), at most two images in
    flight per actor, so the images read ahead stay few."""
    resources = Resources(
        model_actors=actors,
        cpus_per_actor=cpus_per_actor,
        gpus_per_actor=gpus_per_actor,
        device=device,
    )

    def run(items: Iterable[PendingEmbedding], store: EmbeddingStore) -> int:
        pool = start_model_workers(
            resources=resources,
            worker_class=EmbeddingWriter,
            expect_sha256=store.model_sha256,
            model_config=model_config,
            storage_root=store.storage.root_url,
            storage_options=store.storage.options,
            sam_weights_sha256=store.model_sha256,
        )
        done: list[str] = []
        try:
            run_bounded(
                items,
                lambda item, turn: pool.actors[turn % actors].write.remote(item),
                lambda item, digest: done.append(digest),
                2 * actors,
            )
        finally:
            pool.stop()
        return len(done)

    return run
