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
