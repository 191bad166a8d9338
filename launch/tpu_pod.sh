#!/usr/bin/env bash
# Trains ssc_jax on a Cloud TPU VM slice (TPU pod): one process per TPU VM
# worker, jax.distributed detects the slice by itself.
#
#   PROJECT=my-proj ZONE=us-central2-b TPU_NAME=ssc-pod ACCELERATOR_TYPE=v4-32 \
#   BUCKET=gs://my-bucket CONFIG=configs/imagenet_r50_40.py \
#     launch/tpu_pod.sh [create|install|train|logs|delete|all] [--config.key=value ...]
#
# Steps: create   gcloud compute tpus tpu-vm create (the slice)
#        install  copy this repository to every worker (--worker=all) and pip install it
#        train    run the main job on all workers, in the background (nohup), log per worker
#        logs     stream worker 0's log (process 0 writes metrics and summary)
#        delete   delete the slice (only when asked: `delete`, or DELETE_AFTER=1 with `all`)
#        all      create, install, train, logs (default)
# Settings (environment): PROJECT, ZONE, TPU_NAME, ACCELERATOR_TYPE (default
# v4-32), RUNTIME_VERSION (default tpu-ubuntu2204-base), BUCKET (gs://...),
# CONFIG, WORKDIR (default $BUCKET/ssc_jax/$TPU_NAME), DATA_DIR (default
# $BUCKET/tensorflow_datasets: TFDS data prepared there beforehand),
# SPOT=1 (spot VMs), DELETE_AFTER=1, DRY_RUN=1 (or --dry-run: print only).
set -euo pipefail

STEP=all
EXTRA=()
DRY_RUN="${DRY_RUN:-0}"
for arg in "$@"; do
  case "$arg" in
    create|install|train|logs|delete|all) STEP="$arg" ;;
    --dry-run|--dry_run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) EXTRA+=("$arg") ;;
  esac
done

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }
need() {  # need NAME "what it is"
  [[ -n "${!1:-}" ]] || die "missing setting $1: $2 (export $1=...)"
}
need PROJECT "the Google Cloud project"
need ZONE "the zone of the TPU slice, e.g. us-central2-b"
need TPU_NAME "the name of the TPU VM slice"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
if [[ "$STEP" != delete ]]; then
  need BUCKET "a gs:// bucket for the workdir and the TFDS data"
  [[ "$BUCKET" == gs://* ]] || die "BUCKET must start with gs://, got '$BUCKET'"
  need CONFIG "the config file, e.g. configs/imagenet_r50_40.py"
fi
BUCKET="${BUCKET%/}"
WORKDIR="${WORKDIR:-$BUCKET/ssc_jax/$TPU_NAME}"
DATA_DIR="${DATA_DIR:-$BUCKET/tensorflow_datasets}"
REMOTE_DIR="ssc_jax"
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=("--project=$PROJECT" "--zone=$ZONE")

run() {  # prints the command, runs it unless dry run
  echo "+ $*"
  [[ "$DRY_RUN" == 1 ]] || "$@"
}

create() {
  echo "== create TPU slice $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION) in $PROJECT/$ZONE"
  local spot=()
  [[ "${SPOT:-0}" == 1 ]] && spot=(--spot)
  run "${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}" "--accelerator-type=$ACCELERATOR_TYPE" \
    "--version=$RUNTIME_VERSION" ${spot[@]+"${spot[@]}"}
}

install() {
  echo "== install the package on every worker of $TPU_NAME"
  local repo
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  run "${GCLOUD[@]}" scp --recurse "$repo" "$TPU_NAME:~/$REMOTE_DIR" "${WHERE[@]}" --worker=all
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="cd ~/$REMOTE_DIR && pip install -U 'jax[tpu]' && pip install -e '.[tf]'"
}

train() {
  echo "== train $CONFIG on all workers: workdir $WORKDIR, data $DATA_DIR"
  local job="cd ~/$REMOTE_DIR && nohup python -m ssc_jax.main --config=$CONFIG --workdir=$WORKDIR --config.data_dir=$DATA_DIR ${EXTRA[*]:-} > ~/ssc_jax_train.log 2>&1 &"
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$job"
}

logs() {
  echo "== stream worker 0's log (Ctrl-C stops streaming, not training)"
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=0 --command="tail -n +1 -F ~/ssc_jax_train.log"
}

delete() {
  echo "== delete TPU slice $TPU_NAME"
  run "${GCLOUD[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet
}

[[ "$DRY_RUN" == 1 ]] && echo "(dry run: commands are printed, not run)"
case "$STEP" in
  create) create ;;
  install) install ;;
  train) train ;;
  logs) logs ;;
  delete) delete ;;
  all)
    create; install; train
    if [[ "${DELETE_AFTER:-0}" == 1 ]]; then
      echo "== DELETE_AFTER=1: waiting for the job, then deleting the slice"
      run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="while pgrep -f ssc_jax.main >/dev/null; do sleep 60; done; tail -n 5 ~/ssc_jax_train.log"
      delete
    else
      logs
    fi ;;
esac
