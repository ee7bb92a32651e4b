#!/usr/bin/env bash
# Wheels for scripts/peer_opennmt.sh on the GPU machine (Python 3.12, x86-64, no package registry) into .whl/.
# That machine's Python has torch, pyyaml, numpy, regex, sacrebleu and sentencepiece; OpenNMT-py 3.5.1 needs
# only these three more for build_vocab and train (found by removing packages until the dry run failed;
# peer_opennmt.sh stands in for the packages that only onmt's unused transforms import). The call there
# carries .whl and starts with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
platforms=()
for platform in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${platform}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl opennmt-py==3.5.1 configargparse==1.9.0 pyonmttok==1.38.1
du -ch .whl/*.whl | tail -n 1 | sed 's/total$/in .whl\//'
