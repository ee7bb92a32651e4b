#!/usr/bin/env bash
# GPU check, under 8 minutes on a CUDA machine: the GPU-marked tests, 3 minutes of bf16 training of
# configs/multi30k_en_de.yaml on a local copy of the data, decoding speed, and one summary table.
#
#   scripts/gpu_check.sh DATA_DIR [--set KEY=VALUE ...]
#
# DATA_DIR is a local dataset folder (hub layout, or {split}.{lang} text files); extra --set options go to
# training and to the benchmark, e.g. for Multi30k's raw text files:
#   scripts/gpu_check.sh MULTI30K_TEXT_FOLDER --set data.valid_split=val --set data.test_split=test_2016_flickr
# On a machine without a CUDA GPU it says so, runs the GPU tests (which then skip) and stops.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: scripts/gpu_check.sh DATA_DIR [--set KEY=VALUE ...]}
shift
PY=${PYTHON:-python3}
MINUTES=${GPU_CHECK_MINUTES:-3}
OUT=${GPU_CHECK_DIR:-runs/gpu_check-$(date +%Y%m%d-%H%M%S)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: NO CUDA GPU FOUND (torch.cuda.is_available() is False)."
    echo "gpu_check: running the GPU-marked tests (they skip without a GPU); no GPU figures are measured."
    "$PY" -m pytest -q -m gpu tests/test_gpu.py
    exit 0
fi

status=0
echo "== GPU-marked tests"
"$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider || status=1

echo "== training configs/multi30k_en_de.yaml for $MINUTES minutes, bf16, data from $DATA"
"$PY" -m nmt train --config configs/multi30k_en_de.yaml --run-dir "$OUT" --set "data.dataset=$DATA" \
    --set train.precision=bf16 --set "train.max_minutes=$MINUTES" "$@" || status=1

echo "== decoding speed with the best checkpoint"
"$PY" -m nmt bench --config configs/multi30k_en_de.yaml --set "data.dataset=$DATA" --set train.precision=bf16 \
    "$@" --skip-train --checkpoint "$OUT/checkpoints/best.pt" --json "$OUT/bench.json" || status=1

"$PY" - "$OUT" <<'PYEOF'
import json, statistics, sys
from pathlib import Path
from nmt.metrics_log import read_metrics
run = Path(sys.argv[1])
results = json.loads((run / "results.json").read_text())
bench = json.loads((run / "bench.json").read_text())
speeds = [r["tokens_per_sec"] for r in read_metrics(run / "metrics.jsonl") if r.get("tokens_per_sec")]
rows = [
    ("card", results.get("gpu", "?")),
    ("precision", results["precision"]),
    ("training target tokens/s (median of logged windows)", f"{statistics.median(speeds[1:] or speeds):,.0f}"),
    ("training steps in the budget", results["steps"]),
    ("greedy sentences/s (test split)", f"{bench['greedy_sentences_per_sec']:,.0f}"),
    ("beam-5 sentences/s (test split)", f"{bench['beam5_sentences_per_sec']:,.0f}"),
    ("peak GPU memory, training (MiB)", results.get("peak_gpu_memory_mib", "?")),
    ("validation BLEU reached (greedy)", results["best_valid_bleu"]),
    ("test BLEU (beam 5)", results.get("test_bleu", "?")),
]
print("\n| GPU check | |\n| --- | --- |")
for name, value in rows:
    print(f"| {name} | {value} |")
PYEOF
exit $status
