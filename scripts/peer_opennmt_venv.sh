#!/usr/bin/env bash
# A CPU venv for `scripts/peer_opennmt.sh ... --dry-run` (CI): torch 2.13.0, OpenNMT-py 3.5.1 without its
# declared dependencies (it pins torch < 2.3 and names spaCy and others that build_vocab and train never use)
# and the five packages they import. Reused as it is when a previous call completed it.
#   scripts/peer_opennmt_venv.sh VENV_DIR   then   PYTHON=VENV_DIR/bin/python scripts/peer_opennmt.sh ...
set -euo pipefail
VENV=${1:?usage: scripts/peer_opennmt_venv.sh VENV_DIR}
PACKAGES="torch==2.13.0 configargparse==1.9.0 pyonmttok==1.38.1 pyyaml==6.0.4 sacrebleu==2.6.0 sentencepiece==0.2.3"
[ "$(cat "$VENV/.complete" 2>/dev/null)" = "$PACKAGES opennmt-py==3.5.1" ] && exit 0
[ ! -e "$VENV" ] || [ -f "$VENV/pyvenv.cfg" ] || { echo "$VENV exists and is not a venv" >&2; exit 1; }
echo "creating $VENV for OpenNMT-py 3.5.1"
"${PYTHON:-python3}" -m venv --clear "$VENV"
# shellcheck disable=SC2086
"$VENV/bin/pip" install -q --disable-pip-version-check $PACKAGES
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps opennmt-py==3.5.1
echo "$PACKAGES opennmt-py==3.5.1" > "$VENV/.complete"
