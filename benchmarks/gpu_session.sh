#!/usr/bin/env bash
# One lent GPU, no TensorFlow: the results runs and the speed tables, each phase in one call.
#
#   benchmarks/gpu_session.sh results OUT BUDGET_S [ROWS...]   # reproduce, short recipe
#   benchmarks/gpu_session.sh speed OUT                        # network and layer speed tables
#   benchmarks/gpu_session.sh dry OUT                          # both, tiny, on any machine
#
# results: `python -m ssc_jax.reproduce --recipe=short` over the row lists given
# (default: the paper's CIFAR-10 ResNet-32 rows and its VGG-19 rows), one
# reproduce process per list, side by side on the one GPU (each with 45% of
# its memory), each stopping new rows after BUDGET_S seconds; bfloat16 compute.
# The runs that finish are filed under results/runs/short/ and packed into
# OUT/runs.tgz (the device tool returns at most 8 files). Rows that ran side by
# side share the GPU: their images/s are not speed figures. Every SSC layer runs
# the 'dense' lowering (its masked dense kernel): the accuracy is the same under
# any lowering, and no tuning time is spent on these runs.
# speed: benchmarks/network_speed.py (CIFAR-10 ResNet-32 10%, then ResNet-50
# 40% at batch 128, train step only: the issue's GPU targets) and
# benchmarks/layer_speed.py (the CIFAR-10 ResNet-32 layers) in bfloat16, each
# under a timeout (580 s in all: a first run tunes every layer, then times its
# winners inside the network, 5-6 compilations of it); tables to
# OUT/network_speed.md and OUT/layer_speed.md, logs beside them, the
# autotuner's measurements to OUT/autotune.json and the cost rule priced by
# them (benchmarks/cost_rule.py) to OUT/cost_rule.md.
# The CIFAR-10 JPEG archive is read from .data/cifar10-jpeg.tar.xz.
set -uo pipefail
cd "$(dirname "$0")/.."
PHASE="${1:?phase: results, speed or dry}"
OUT="${2:?OUT directory}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export SSC_JAX_AUTOTUNE_CACHE="$OUT/autotune.json"
ARCHIVE=.data/cifar10-jpeg.tar.xz
RESULTS="${RESULTS:-results}"  # where finished rows are filed (dry: under OUT)

results() {  # results BUDGET_S [ROW_LIST...]
  local budget="$1"; shift
  local lists=("$@")
  [[ ${#lists[@]} -gt 0 ]] || lists=(
    cifar10_resnet32_dense,cifar10_resnet32_10,cifar10_resnet32_5,cifar10_resnet32_2
    cifar10_vgg19_dense,cifar10_vgg19_10,cifar10_vgg19_5,cifar10_vgg19_2)
  local pids=() i=0
  for rows in "${lists[@]}"; do
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 "$PYTHON" -m ssc_jax.reproduce --rows="$rows" \
      --recipe="${RECIPE:-short}" --out="/tmp/ssc_reproduce_$i" --time_budget_s="$budget" \
      --grace_s=20 --overrides="model.dtype=bfloat16,lowering=dense${EXTRA_OVERRIDES:+,$EXTRA_OVERRIDES}" \
      --data="$ARCHIVE" --results="$RESULTS" > "$OUT/reproduce_$i.log" 2>&1 &
    pids+=($!)
    i=$((i + 1))
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  tar czf "$OUT/runs.tgz" -C "$RESULTS" runs
  tail -n 5 "$OUT"/reproduce_*.log
}

speed() {  # speed [CIFAR batch (0: the configs')] [ResNet-50 batch]
  # Each table's rows reach OUT as they are measured, and each layer's tuning
  # reaches OUT/autotune.json as it ends: a phase cut by its timeout keeps both.
  timeout 200 "$PYTHON" benchmarks/network_speed.py --configs=cifar10_resnet32_10 \
    --batch="${1:-0}" --dtype=bfloat16 --repeats=10 --out="$OUT/network_speed.md" 2> "$OUT/cifar.log"
  timeout 280 "$PYTHON" benchmarks/network_speed.py --configs=imagenet_r50_40 --no_eval \
    --batch="${2:-128}" --dtype=bfloat16 --repeats=10 --out="$OUT/network_speed.md" 2> "$OUT/r50.log"
  timeout 100 "$PYTHON" benchmarks/layer_speed.py --configs=cifar10_resnet32_10 \
    --batch="${1:-0}" --dtype=bfloat16 --repeats=20 --out="$OUT/layer_speed.md" 2> "$OUT/layers.log"
  "$PYTHON" benchmarks/cost_rule.py --out="$OUT/cost_rule.md" > /dev/null 2>> "$OUT/layers.log"
  grep -h "tuned\|Error\|forward" "$OUT"/*.log | cut -c1-200 | tail -n 16
  cat "$OUT"/network_speed.md "$OUT"/layer_speed.md
  tail -n 1 "$OUT/cost_rule.md"
}

case "$PHASE" in
  results) shift 2; results "$@" ;;
  speed) speed ;;
  dry)  # the same code paths, tiny: a CPU check of this script
    RESULTS="$OUT/results" EXTRA_OVERRIDES=num_train_steps=3,model.dtype=float32 \
      results 600 cifar10_resnet32_10
    speed 4 2 ;;
  *) echo "gpu_session.sh: unknown phase '$PHASE' (results, speed or dry)" >&2; exit 2 ;;
esac
