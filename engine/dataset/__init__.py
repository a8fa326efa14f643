"""The SA-1B dataset format, for every writer and reader of the engine:

- `layout`: file names, the manifest (the commit marker of each shard), the summary, ids;
- `writer`: staging images, committing shards, `DatasetWriter` for sequential writers;
- `reader`: the records of committed shards;
- `inspect`, `stats`, `pictures`: `saengine inspect` (verification, statistics, plots).

The layout's names are importable from here.
"""

from engine.dataset.layout import (
    ANNOTATION_ID_STRIDE,
    FILES,
    JOB_FILE,
    MANIFEST_DIR,
    MANIFEST_SCHEMA,
    RUNS_DIR,
    STAGING_DIR,
    STATUS_ERROR,
    STATUS_OK,
    SUMMARY_FILE,
    ManifestRow,
    committed_shards,
    dumps_json,
    image_key,
    manifest_part_path,
    read_manifest,
    run_name,
    shard_name,
    staged_path,
    write_manifest_part,
    write_summary,
)

__all__ = [
    "ANNOTATION_ID_STRIDE",
    "FILES",
    "JOB_FILE",
    "MANIFEST_DIR",
    "MANIFEST_SCHEMA",
    "RUNS_DIR",
    "STAGING_DIR",
    "STATUS_ERROR",
    "STATUS_OK",
    "SUMMARY_FILE",
    "ManifestRow",
    "committed_shards",
    "dumps_json",
    "image_key",
    "manifest_part_path",
    "read_manifest",
    "run_name",
    "shard_name",
    "staged_path",
    "write_manifest_part",
    "write_summary",
]
