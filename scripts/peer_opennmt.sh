#!/usr/bin/env bash
# OpenNMT-py 3.5.1 trained on the matched model (configs/bench_matched.yaml's sizes) for the GPU check's table.
#
#   scripts/peer_opennmt.sh RAW_DIR WORK_DIR SECONDS [--dry-run]
#
# RAW_DIR holds Multi30k's raw text: train.en/.de and val.en/.de (or valid.en/.de). $PYTHON (default python3)
# must import torch, sentencepiece and onmt 3.5.1 with the few packages it needs (scripts/gpu_wheels.sh for
# the GPU machine, scripts/peer_opennmt_venv.sh for a CPU venv). Stages: a joint 8,000-piece unigram
# sentencepiece model on train.en+train.de, train and val encoded into pieces; the config in WORK_DIR (GPU 0
# when torch sees one, else the CPU); vocab; training stopped by SIGINT after SECONDS, no checkpoint.
# Last line: "opennmt target_tokens_per_s=N steps=N", or "opennmt FAILED: why" and exit status 1.
# --dry-run: every stage, tiny: 500 pieces on the first 2,000 lines, a 16/32-wide model that stops itself
# after 30 steps (~20 s on 2 cores; SECONDS stays the limit, so give it 120) and saves one checkpoint.
set -uo pipefail
[ $# -ge 3 ] || { echo "usage: scripts/peer_opennmt.sh RAW_DIR WORK_DIR SECONDS [--dry-run]" >&2; exit 2; }
RAW=$1 WORK=$2 BUDGET=$3 DRY=${4:-}
PY=${PYTHON:-python3}
fail() { echo "opennmt FAILED: $*"; exit 1; }
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd) || fail "cannot make $WORK"
# onmt imports all its transforms at start-up; four import packages these runs never use (spaCy, fastText,
# RapidFuzz, pyahocorasick: 64 MB of wheels with spaCy's own needs), so empty modules stand in for them.
mkdir -p "$WORK/stubs" && echo "fuzz = process = None" > "$WORK/stubs/rapidfuzz.py" || fail "cannot write $WORK"
for module in spacy fasttext ahocorasick; do : > "$WORK/stubs/$module.py"; done
export PYTHONPATH="$WORK/stubs${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - "$RAW" "$WORK" "$DRY" > "$WORK/prep.log" 2>&1 <<'EOF' || fail "sentencepiece stage, see $WORK/prep.log"
import itertools, os, sys
import sentencepiece as spm
raw, work, dry = sys.argv[1], sys.argv[2], sys.argv[3] == "--dry-run"
valid = "val" if os.path.exists(f"{raw}/val.en") else "valid"
def read(split, lang):
    with open(f"{raw}/{split}.{lang}", encoding="utf-8") as f:
        return [line.strip() for line in itertools.islice(f, 2000 if dry else None)]
spm.SentencePieceTrainer.train(  # the settings of the peers' shared model
    sentence_iterator=iter(read("train", "en") + read("train", "de")), model_prefix=f"{work}/spm",
    vocab_size=500 if dry else 8000, hard_vocab_limit=not dry, model_type="unigram", character_coverage=1.0,
    num_threads=os.cpu_count(), input_sentence_size=0, shuffle_input_sentence=False,
    seed_sentencepiece_size=1000000, minloglevel=1)
sp = spm.SentencePieceProcessor(model_file=f"{work}/spm.model")
for split in ("train", valid):
    for lang in ("en", "de"):
        with open(f"{work}/{split[:3]}.{lang}", "w", encoding="utf-8") as f:
            f.writelines(" ".join(pieces) + "\n" for pieces in sp.encode(read(split, lang), out_type=str))
EOF

GPU=$("$PY" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null) || fail "$PY cannot import torch"
if [ "$GPU" = True ]; then
    DEVICE="gpu_ranks: [0]"
    WORKERS=2  # onmt's default; on the CPU the 2 cores go to training
else
    DEVICE="gpu_ranks: []"
    WORKERS=0
fi
if [ "$DRY" = --dry-run ]; then
    EMB=16 ENC=32 DEC=32 STEPS=30 REPORT=5
else
    EMB=256 ENC=512 DEC=512 STEPS=1000000 REPORT=50
fi
cat > "$WORK/config.yaml" <<EOF
# brnn LSTM encoder (enc_hid_size is both directions) + LSTM decoder, Luong general attention, input feeding
save_data: $WORK/run
src_vocab: $WORK/vocab.src
tgt_vocab: $WORK/vocab.tgt
overwrite: true
src_vocab_size: 100000
tgt_vocab_size: 100000
data:
    corpus_1: {path_src: $WORK/tra.en, path_tgt: $WORK/tra.de, transforms: [filtertoolong]}
    valid: {path_src: $WORK/val.en, path_tgt: $WORK/val.de, transforms: [filtertoolong]}
src_seq_length: 100
tgt_seq_length: 100
seed: 42
encoder_type: brnn
decoder_type: rnn
rnn_type: LSTM
enc_layers: 2
dec_layers: 2
word_vec_size: $EMB
enc_hid_size: $ENC
dec_hid_size: $DEC
global_attention: general
input_feed: 1
bridge: false
dropout: [0.3]
param_init: 0.1
optim: sgd
learning_rate: 1.0
max_grad_norm: 5.0
decay_method: none
start_decay_steps: 1000000
batch_type: sents
batch_size: 64
normalization: sents
accum_count: [1]
train_steps: $STEPS
valid_steps: 1000000
save_checkpoint_steps: 1000000
save_model: $WORK/model
report_every: $REPORT
num_workers: $WORKERS
bucket_size: 32768
world_size: 1
$DEVICE
EOF

"$PY" -m onmt.bin.build_vocab -config "$WORK/config.yaml" -n_sample -1 > "$WORK/build_vocab.log" 2>&1 \
    || fail "onmt build_vocab, see $WORK/build_vocab.log"
timeout -k 20 -s INT "$BUDGET" "$PY" -m onmt.bin.train -config "$WORK/config.yaml" > "$WORK/train.log" 2>&1
rc=$?
[ $rc = 0 ] || [ $rc = 124 ] || [ $rc = 137 ] || fail "onmt train exited $rc, see $WORK/train.log"

# Steady window: every report after the first two (past step 100 at full size; the first two hold start-up:
# CUDA and cuDNN set-up, data workers, the first buckets read). Each report gives its interval's target
# tokens per batch (bsz's 2nd figure) and target tokens/s ("X/Y tok/s": X source, Y target; onmt's target
# tokens are the non-pad pieces plus </s>), so with one batch a step an interval lasts steps x tokens per
# batch / tokens/s; the figure is the window's tokens over its seconds.
"$PY" - "$WORK/train.log" <<'EOF' || exit 1
import re, sys
report = re.compile(r"Step +(\d+)/ *\d+;.*bsz: +[\d.]+/ *([\d.]+)/ *[\d.]+; +[\d.]+/ *([\d.]+) tok/s;")
rows = [tuple(map(float, m.groups())) for m in map(report.search, open(sys.argv[1])) if m]
window = [(step - before, per_batch, rate) for (before, _, _), (step, per_batch, rate) in zip(rows, rows[1:])][1:]
if not window:
    print(f"opennmt FAILED: {len(rows)} step reports, the steady window starts at the 3rd")
    sys.exit(1)
tokens = sum(steps * per_batch for steps, per_batch, _ in window)
seconds = sum(steps * per_batch / rate for steps, per_batch, rate in window)
print(f"opennmt target_tokens_per_s={tokens / seconds:.0f} steps={rows[-1][0]:.0f}")
EOF
