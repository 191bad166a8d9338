#!/usr/bin/env bash
# Starts N processes of ssc_jax.main on this machine, one jax.distributed job.
#
#   launch/local_multiprocess.sh --config=configs/default.py --workdir=/tmp/run \
#       [--num_processes=2] [--devices_per_process=2] [--port=PORT] [--dry-run] \
#       [-- --config.num_train_steps=100 ...]
#
# Settings may also come from the environment: CONFIG, WORKDIR, NUM_PROCESSES,
# DEVICES_PER_PROCESS, PORT, PYTHON, DRY_RUN=1. Process i runs with
# --coordinator_address=localhost:PORT --num_processes=N --process_id=i and,
# on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=DEVICES_PER_PROCESS
# (on a GPU machine set CUDA_VISIBLE_DEVICES per process yourself instead).
# Logs go to WORKDIR/logs/process_<i>.log; the script waits for all processes
# and exits non-zero (naming them) if any fails; Ctrl-C stops them all.
set -euo pipefail

CONFIG="${CONFIG:-}"
WORKDIR="${WORKDIR:-}"
NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-1}"
PORT="${PORT:-}"
PYTHON="${PYTHON:-python}"
DRY_RUN="${DRY_RUN:-0}"
EXTRA=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --num_processes=*) NUM_PROCESSES="${1#*=}" ;;
    --devices_per_process=*) DEVICES_PER_PROCESS="${1#*=}" ;;
    --port=*) PORT="${1#*=}" ;;
    --dry-run|--dry_run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    --) shift; EXTRA+=("$@"); break ;;
    *) EXTRA+=("$1") ;;
  esac
  shift
done

die() { echo "local_multiprocess.sh: $*" >&2; exit 2; }
[[ -n "$CONFIG" ]] || die "missing setting CONFIG (--config=configs/X.py): the config file to train"
[[ -n "$WORKDIR" ]] || die "missing setting WORKDIR (--workdir=DIR): shared checkpoint/log directory"
[[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]] || die "NUM_PROCESSES (--num_processes) must be a positive integer, got '$NUM_PROCESSES'"
[[ "$DEVICES_PER_PROCESS" =~ ^[1-9][0-9]*$ ]] || die "DEVICES_PER_PROCESS (--devices_per_process) must be a positive integer, got '$DEVICES_PER_PROCESS'"
if [[ -z "$PORT" ]]; then
  PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
fi

cd "$(dirname "$0")/.."
echo "local_multiprocess: $NUM_PROCESSES processes x $DEVICES_PER_PROCESS devices, coordinator localhost:$PORT, config $CONFIG, workdir $WORKDIR"
COMMANDS=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  COMMANDS+=("XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS $PYTHON -m ssc_jax.main --config=$CONFIG --workdir=$WORKDIR --coordinator_address=localhost:$PORT --num_processes=$NUM_PROCESSES --process_id=$i ${EXTRA[*]:-}")
done
for c in "${COMMANDS[@]}"; do echo "+ $c"; done
if [[ "$DRY_RUN" == 1 ]]; then
  echo "(dry run: nothing started)"
  exit 0
fi

mkdir -p "$WORKDIR/logs"
PIDS=()
cleanup() {  # SIGTERM (a chance to save), then SIGKILL after 10 s: peers may block in collectives
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 10); do
    alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 1
  done
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}
trap 'cleanup; exit 130' INT TERM
for ((i = 0; i < NUM_PROCESSES; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS ${XLA_FLAGS:-}" \
    "$PYTHON" -m ssc_jax.main "--config=$CONFIG" "--workdir=$WORKDIR" \
    "--coordinator_address=localhost:$PORT" "--num_processes=$NUM_PROCESSES" \
    "--process_id=$i" ${EXTRA[@]+"${EXTRA[@]}"} > "$WORKDIR/logs/process_$i.log" 2>&1 &
  PIDS+=($!)
  echo "process $i: pid ${PIDS[$i]}, log $WORKDIR/logs/process_$i.log"
done

FAILED=()
RUNNING=$NUM_PROCESSES
DONE=()
while ((RUNNING > 0)); do
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    [[ -z "${DONE[$i]:-}" ]] || continue
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      rc=0; wait "${PIDS[$i]}" || rc=$?
      DONE[$i]=1; RUNNING=$((RUNNING - 1))
      if ((rc != 0)); then
        FAILED+=("$i (exit $rc)")
        # The others would block in collectives waiting for it: stop them.
        cleanup
      fi
    fi
  done
  ((RUNNING == 0)) || sleep 1
done
if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "local_multiprocess: FAILED processes: ${FAILED[*]}; last lines of their logs:" >&2
  for f in "${FAILED[@]}"; do tail -n 20 "$WORKDIR/logs/process_${f%% *}.log" >&2 || true; done
  exit 1
fi
echo "local_multiprocess: all $NUM_PROCESSES processes finished"
