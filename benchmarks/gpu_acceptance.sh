#!/usr/bin/env bash
# The accelerator checks of issues 4 and 5 in one command, on one GPU or TPU host:
#   1. the device-resident pipeline against the cifar10_resnet32_10 train step it feeds;
#   2. cifar10_resnet32_10 and cifar10_resnet32_dense, EPOCHS epochs each, from the
#      CIFAR-10 JPEG copy through the device-resident pipeline (no TensorFlow needed).
#
#   benchmarks/gpu_acceptance.sh --out=DIR [--archive=PATH] [--epochs=15]
#       [--dtype=bfloat16] [--python=python3] [--dry-run]
#
# DIR receives feed_vs_step.md, one workdir per config (summary.json, metrics),
# one log per config (<config>.log) and summary.md, a table of both runs with
# the card, jax version and date. --archive defaults to
# ../shared/data/cifar10-jpeg.tar.xz; it is unpacked once into DIR/cifar10-jpeg.
# The runs keep the CIFAR recipe, whose learning-rate drops (epochs 100/150/200)
# lie beyond 15 epochs: lr stays 0.1, so top-1 is below the paper's 250-epoch
# figures. A config's workdir already in DIR is refused (it would resume).
set -euo pipefail

OUT=""
ARCHIVE="$(cd "$(dirname "$0")/.." && pwd)/../shared/data/cifar10-jpeg.tar.xz"
EPOCHS=15
DTYPE=bfloat16
PYTHON="${PYTHON:-python3}"
DRY_RUN=0
CONFIGS=(cifar10_resnet32_10 cifar10_resnet32_dense)

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out=*) OUT="${1#*=}" ;;
    --archive=*) ARCHIVE="${1#*=}" ;;
    --epochs=*) EPOCHS="${1#*=}" ;;
    --dtype=*) DTYPE="${1#*=}" ;;
    --python=*) PYTHON="${1#*=}" ;;
    --dry-run|--dry_run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_acceptance.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "gpu_acceptance.sh: $*" >&2; exit 2; }
[[ -n "$OUT" ]] || die "missing setting --out=DIR: where the results go"
[[ "$EPOCHS" =~ ^[1-9][0-9]*$ ]] || die "--epochs must be a positive integer, got '$EPOCHS'"
[[ "$DTYPE" =~ ^(float32|bfloat16)$ ]] || die "--dtype must be float32 or bfloat16, got '$DTYPE'"
[[ -f "$ARCHIVE" ]] || die "no CIFAR-10 JPEG archive at '$ARCHIVE' (give --archive=PATH)"
[[ "$OUT" == /* ]] || OUT="$PWD/$OUT"  # the commands below run from the repository root
[[ "$ARCHIVE" == /* ]] || ARCHIVE="$PWD/$ARCHIVE"
for config in "${CONFIGS[@]}"; do
  [[ ! -e "$OUT/$config" ]] || die "$OUT/$config exists: a new run would resume it; remove it or choose another --out"
done

cd "$(dirname "$0")/.."
DATA="$OUT/cifar10-jpeg"
UNPACK=("$PYTHON" -c "import sys; from ssc_jax.data import archive; archive.unpack_once(sys.argv[1], sys.argv[2])" "$ARCHIVE" "$DATA")
FEED=("$PYTHON" benchmarks/input_pipeline.py --skip_pipelines --folder_dir="$DATA"
      --train_config=configs/cifar10_resnet32_10.py --dtype="$DTYPE" --train_steps=50)
train_command() {  # fills TRAIN with the main-job command of config $1
  TRAIN=("$PYTHON" -m ssc_jax.main "--config=configs/$1.py" "--workdir=$OUT/$1"
         --config.data_source=folder "--config.folder_dir=$DATA" --config.pipeline=device
         "--config.num_epochs=$EPOCHS" "--config.model.dtype=$DTYPE")
}

if [[ "$DRY_RUN" == 1 ]]; then
  quoted() { printf ' %q' "$@"; }  # a command as the shell would read it back
  echo "would run, in $(pwd):"
  echo " $(quoted "${UNPACK[@]}")"
  echo " $(quoted "${FEED[@]}") >$(quoted "$OUT/feed_vs_step.md")"
  for config in "${CONFIGS[@]}"; do
    train_command "$config"
    echo " $(quoted "${TRAIN[@]}") >$(quoted "$OUT/$config.log")"
  done
  echo "  then write $OUT/summary.md from each $OUT/<config>/summary.json"
  exit 0
fi

mkdir -p "$OUT"
"${UNPACK[@]}"
"${FEED[@]}" | tee "$OUT/feed_vs_step.md"
for config in "${CONFIGS[@]}"; do
  train_command "$config"
  "${TRAIN[@]}" > "$OUT/$config.log" 2>&1 || { echo "gpu_acceptance.sh: $config failed: see $OUT/$config.log" >&2; exit 1; }
done
"$PYTHON" - "$OUT" "$EPOCHS" "$DTYPE" "${CONFIGS[@]}" <<'EOF' | tee "$OUT/summary.md"
import datetime, json, pathlib, sys
import jax
out, epochs, dtype, configs = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
device = jax.devices()[0]
recipe = ' (lr 0.1 throughout: the first drop is at epoch 100)' if int(epochs) <= 100 else ''
print(f'# {epochs} epochs{recipe}, model.dtype {dtype}, jax {jax.__version__}, '
      f'{datetime.date.today().isoformat()}\n')
print('| config | devices | test top-1 | kept fraction | images/s | wall time s |')
print('|---|---|---:|---:|---:|---:|')
for name in configs:
  s = json.loads((out / name / 'summary.json').read_text())
  rate = 'n/a' if s['images_per_second'] is None else f"{s['images_per_second']:,.0f}"
  print(f"| {name} | {s['devices']} | {s['test_top1']:.4f} | {s['kept_fraction']:.4f} | "
        f"{rate} | {s['wall_time_s']:.0f} |")
EOF
