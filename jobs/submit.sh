#!/usr/bin/env bash
# Submit a generation job to a running Ray cluster with `ray job submit`.
#
#   RAY_ADDRESS=http://<head-node>:8265 jobs/submit.sh \
#       input=s3://my-bucket/images output=s3://my-bucket/sa-dataset \
#       model=vit_h model.checkpoint=/models/sam_vit_h_4b8939.pth
#
# Extra arguments are Hydra overrides for `saengine generate`. The defaults below put one
# model worker on each of 8 GPUs; change them to match the cluster. The cluster's image must
# have this package installed (pip install sa-data-engine), or uncomment --runtime-env-json.
# Rerunning the same command resumes the job: committed shards are kept.
set -euo pipefail
: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster's dashboard, e.g. http://head:8265}"
GPUS="${GPUS:-8}"

exec ray job submit --address "$RAY_ADDRESS" \
    --submission-id "saengine-$(date +%Y%m%d-%H%M%S)" \
    --working-dir "$(dirname "$0")/.." \
    -- saengine generate \
    ray.address=auto \
    resources.model_actors="$GPUS" \
    resources.gpus_per_actor=1 \
    resources.cpus_per_actor=4 \
    resources.max_in_flight=$((GPUS * 6)) \
    images_per_shard=11000 \
    generator=sa1b \
    "$@"
# --runtime-env-json '{"pip": ["sa-data-engine"]}'
