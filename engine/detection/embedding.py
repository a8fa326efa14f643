"""Computing the embeddings the detector needs: in this process (small data) or on Ray model
actors that each load the SAM once and write what they compute straight to the store."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.detection.data import Embedder, PendingEmbedding, decode_rgb
from engine.embeddings import EmbeddingStore, embed_image
from engine.generation.workers import Failure, ModelWorker
from engine.images import DecodedImage
from engine.storage import Storage
from model import Sam, SamPredictor
from stages.automatic import GeneratorConfig


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


class EmbeddingWriter:
    """A Ray model actor: the SAM of `model_config` (a `_target_` config) loaded once; each
    call embeds one image and writes it to the store. Refuses to start when the model is not
    the one whose SHA-256 names the store."""

    def __init__(
        self,
        *,
        model_config: dict[str, Any],
        storage_root: str,
        storage_options: dict[str, Any],
        sam_weights_sha256: str,
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        self.worker = ModelWorker(
            model_config=model_config,
            generator_config=GeneratorConfig(),
            device=device,
            threads=threads,
        )
        identity = self.worker.identity()
        if "error" in identity:
            raise ValueError(f"the embedding actor cannot load its model: {identity['error']}")
        if identity["weights_sha256"] != sam_weights_sha256:
            raise ValueError("the embedding actor loaded another SAM than the driver")
        storage = Storage(storage_root, storage_options)
        self.store = EmbeddingStore(storage, sam_weights_sha256)

    def embed(self, item: PendingEmbedding) -> str:
        decoded = DecodedImage(jpeg=item.data, rgb=decode_rgb(item))
        result = self.worker.embed(decoded)
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

    def run(items: Iterable[PendingEmbedding], store: EmbeddingStore) -> int:
        import ray

        remote = ray.remote(EmbeddingWriter).options(
            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor
        )
        pool: list[Any] = [
            remote.remote(
                model_config=model_config,
                storage_root=store.storage.root_url,
                storage_options=store.storage.options,
                sam_weights_sha256=store.model_sha256,
                device=device,
                threads=max(1, int(cpus_per_actor)),
            )
            for _ in range(actors)
        ]
        try:
            return _drive(pool, items, limit=2 * actors)
        finally:
            for actor in pool:
                ray.kill(actor)

    return run


def _drive(pool: list[Any], items: Iterable[PendingEmbedding], *, limit: int) -> int:
    import ray

    in_flight: list[Any] = []
    done = 0
    for position, item in enumerate(items):
        if len(in_flight) >= limit:
            ready, in_flight = ray.wait(in_flight, num_returns=1)
            ray.get(ready)
            done += 1
        in_flight.append(pool[position % len(pool)].embed.remote(item))
    ray.get(in_flight)
    return done + len(in_flight)
