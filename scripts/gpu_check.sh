#!/usr/bin/env bash
# The GPU check: one call of under 9 minutes on a lent CUDA machine, prepared and dry-run on a CPU.
#
#   scripts/gpu_check.sh DATA_DIR [--set KEY=VALUE ...]     # on the GPU machine
#   scripts/gpu_check.sh --dry-run                          # anywhere: every stage on the CPU, tiny (CI runs it)
#
# Stages: the machine (GPU, driver, this machine's Python and torch, what nmt picks); the GPU-marked tests;
# configs/multi30k_en_de.yaml trained with the compiled recurrence, then as shipped
# (target tokens/s of each); test2016 decoded greedy and beam 5 with the first run's checkpoint and scored;
# the matched model (configs/bench_matched.yaml) trained by OpenNMT-py 3.5.1 and by nmt for as long, one after
# the other; one table. DATA_DIR holds Multi30k's raw text files (train, val, test_2016_flickr x .en/.de).
# The GPU machine reaches no package registry: scripts/gpu_wheels.sh fills .whl/ here, and the call carries
# it (README of the device tool); without it the OpenNMT-py stage says so and the rest runs.
# Stage lengths: GPU_CHECK_MINUTES (3), GPU_CHECK_EAGER_MINUTES (0.5), GPU_CHECK_PEER_SECONDS (60, each
# of the two matched runs): with start-up, data preparation and decoding, the whole call fits the device
# tool's 10-minute limit per command (the issue's 4 + 1 + 1.5 + 1.5 minutes of training alone would not).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ "${1:-}" = "--dry-run" ]; then
    shift
    DRY=1 DATA=tests/data/tiny CONFIG=configs/tiny.yaml MATCHED=configs/tiny.yaml
    MAIN_MIN=0.4 EAGER_MIN=0.05 MATCHED_MIN=0.05 PEER_S=120 TEST=test DEVICE=cpu  # compiling takes ~15 s here;
    # the dry OpenNMT-py run stops itself after 30 steps
    SPLITS=()
else
    DRY=0 DATA=${1:?usage: scripts/gpu_check.sh DATA_DIR [--set KEY=VALUE ...] | --dry-run}
    shift
    CONFIG=configs/multi30k_en_de.yaml MATCHED=configs/bench_matched.yaml TEST=test_2016_flickr DEVICE=cuda
    MAIN_MIN=${GPU_CHECK_MINUTES:-3} EAGER_MIN=${GPU_CHECK_EAGER_MINUTES:-0.5} PEER_S=${GPU_CHECK_PEER_SECONDS:-60}
    MATCHED_MIN=$(awk "BEGIN {print $PEER_S / 60}")
    SPLITS=(--set data.valid_split=val --set "data.test_split=$TEST")
fi
OUT=${GPU_CHECK_DIR:-runs/gpu_check-$(date +%Y%m%d-%H%M%S)}
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
    echo "gpu_check: $OUT is not empty: give GPU_CHECK_DIR a new folder"; exit 1
fi
mkdir -p "$OUT"
# the table whatever happens: a stage that failed, or the call's time limit (SIGTERM), shows as "-"
trap '"$PY" scripts/gpu_check_table.py "$OUT"' EXIT
trap 'exit 143' TERM INT
COMMON=(--set "data.dataset=$DATA" --set "train.device=$DEVICE" "${SPLITS[@]}" "$@")
status=0
stage() { echo "== $(date +%T) $*"; echo "$*,$(date +%s)" >> "$OUT/stages.csv"; }
fail() { echo "gpu_check: FAILED: $*"; status=1; }

stage "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" --version; "$PY" -m nmt --version; } | tee "$OUT/machine.txt"

stage "GPU-marked tests"
"$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -3 | tee "$OUT/gpu_tests.txt" \
    || fail "GPU tests"

train() {  # run folder, config, minutes, settings...
    local run=$1 config=$2 minutes=$3; shift 3
    "$PY" -m nmt train --config "$config" --run-dir "$OUT/$run" "${COMMON[@]}" --set "train.max_minutes=$minutes" \
        --set data.test_split=null "$@" > "$OUT/$run.log" 2>&1 || { tail -5 "$OUT/$run.log"; fail "training $run"; }
}
stage "default config, compiled recurrence, $MAIN_MIN min"
train compiled "$CONFIG" "$MAIN_MIN" --set train.fused_recurrence=true --set train.compile=true
stage "default config as shipped, $EAGER_MIN min"
train eager "$CONFIG" "$EAGER_MIN"

DECODED=compiled
[ -f "$OUT/compiled/checkpoints/best.pt" ] || DECODED=eager  # the compiled run failed: still decode
CHECKPOINT=$OUT/$DECODED/checkpoints/best.pt
for beam in 1 5; do
    stage "test split, beam $beam, with the $DECODED run's checkpoint"
    start=$(date +%s.%N)
    "$PY" -m nmt evaluate \
        --checkpoint "$CHECKPOINT" --dataset "$DATA" --split "$TEST" --beam-size "$beam" \
        --device "$DEVICE" --out "$OUT/decode" --json > "$OUT/decode_beam$beam.json" 2> "$OUT/decode_beam$beam.log" \
        || { tail -3 "$OUT/decode_beam$beam.log"; fail "decoding with beam $beam"; }
    "$PY" -c "import time; print(time.time() - $start)" > "$OUT/decode_beam$beam.seconds"  # with loading
done

stage "matched model: OpenNMT-py, $PEER_S s"
if [ -d .whl ] && [ "$DRY" = 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
PEER_PY=$PY PEER_FLAGS=()
[ "$DRY" = 1 ] && PEER_PY=${GPU_CHECK_PEER_VENV:-.venv-opennmt}/bin/python PEER_FLAGS=(--dry-run)
if [ -x "$(command -v "$PEER_PY")" ]; then
    PYTHON=$PEER_PY scripts/peer_opennmt.sh "$DATA" "$OUT/opennmt" "$PEER_S" "${PEER_FLAGS[@]}" \
        > "$OUT/opennmt.log" 2>&1 || { tail -5 "$OUT/opennmt.log"; fail "OpenNMT-py"; }
else
    echo "no Python for OpenNMT-py at $PEER_PY" | tee "$OUT/opennmt.log"; fail "OpenNMT-py"
fi
stage "matched model: nmt, $MATCHED_MIN min"
train matched "$MATCHED" "$MATCHED_MIN"
stage "end"
exit $status
