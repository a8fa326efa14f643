#!/usr/bin/env bash
# Submit a generation job to a running Ray cluster with `ray job submit`.
#
#   RAY_ADDRESS=http://<head-node>:8265 jobs/submit.sh \
#       input=s3://my-bucket/images output=s3://my-bucket/sa-dataset \
#       model=vit_h model.checkpoint=/models/sam_vit_h_4b8939.pth
#
# Extra arguments are Hydra overrides for `saengine generate` (a later value wins over the
# defaults below). The defaults put one model worker on each of 8 GPUs; change them to match
# the cluster. The output must be object storage or a filesystem mounted at the same path on
# every node (the job checks). The cluster's image must have this package installed (pip
# install sa-data-engine), or set RUNTIME_ENV_JSON='{"pip": ["sa-data-engine"]}'.
# Environment: GPUS (default 8), SUBMISSION_ID (default saengine-<date>-<time>),
# RUNTIME_ENV_JSON (a Ray runtime env: pip packages, env_vars, ...). With token
# authentication on the cluster, RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN, or
# RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) must be set here too.
# Rerunning the same command resumes the job: committed shards are kept.
set -euo pipefail
: "${RAY_ADDRESS:?set RAY_ADDRESS to the dashboard of the cluster, e.g. http://head:8265}"
GPUS="${GPUS:-8}"
SUBMISSION_ID="${SUBMISSION_ID:-saengine-$(date +%Y%m%d-%H%M%S)}"
runtime_env=()
if [ -n "${RUNTIME_ENV_JSON:-}" ]; then
    runtime_env=(--runtime-env-json "$RUNTIME_ENV_JSON")
fi

exec ray job submit --address "$RAY_ADDRESS" \
    --submission-id "$SUBMISSION_ID" \
    --working-dir "$(dirname "$0")/.." \
    "${runtime_env[@]}" \
    -- saengine generate \
    ray.address=auto \
    resources.model_actors="$GPUS" \
    resources.gpus_per_actor=1 \
    resources.cpus_per_actor=4 \
    resources.batch_images=16 \
    images_per_shard=11000 \
    generator=sa1b \
    "$@"
