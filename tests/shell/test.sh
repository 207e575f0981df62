#!/usr/bin/env bash
# The extension in the sqlite3 shell: the README demo runs, and a vec0 KNN and an audiotext_index
# KNN over text_embed find the expected neighbour.
set -uo pipefail
cd "$(dirname "$0")/../.."
passed=0; failed=0
check() { # name, expected substring, actual
  if [[ "$3" == *"$2"* ]]; then passed=$((passed + 1)); echo "ok   $1"
  else failed=$((failed + 1)); echo "FAIL $1: expected '$2' in:"; echo "$3" | sed 's/^/     /'; fi
}

out=$(sqlite3 -bail :memory: < sql/demo.sql 2>&1)
status=$?
check "demo runs to the end" "exit 0" "exit $status"
# First row under the first KNN table's header ("│ caption │ distance │").
first_knn_row=$(echo "$out" | grep -A2 -m1 '│ *distance *│' | tail -1)
check "demo ranks the rain caption first for 'storm and downpour'" "rain falls steadily on a tin roof" "$first_knn_row"

out=$(sqlite3 -bail :memory: 2>&1 <<'SQL'
.load dist/audiotext0
CREATE TABLE sounds(id INTEGER PRIMARY KEY, label TEXT);
INSERT INTO sounds(label) VALUES ('church bells ringing'), ('a cat meowing'), ('thunder rumbling');
CREATE VIRTUAL TABLE v USING vec0(e float[384] distance_metric=cosine);
INSERT INTO v(rowid, e) SELECT id, text_embed(label) FROM sounds;
SELECT s.label FROM v JOIN sounds s ON s.id = v.rowid WHERE e MATCH text_embed('kitten') AND k = 1;
SQL
)
check "vec0 KNN over text_embed in the shell" "a cat meowing" "$out"

db=$(mktemp -d)/index.db
out=$(sqlite3 -bail "$db" 2>&1 <<'SQL'
.load dist/audiotext0
CREATE TABLE sounds(id INTEGER PRIMARY KEY, label TEXT);
INSERT INTO sounds(label) VALUES ('church bells ringing'), ('a cat meowing'), ('thunder rumbling');
CREATE VIRTUAL TABLE v USING audiotext_index(e float[384]);
INSERT INTO v(rowid, e) SELECT id, text_embed(label) FROM sounds;
SQL
)
status=$?
check "audiotext_index builds in a database file" "exit 0" "exit $status $out"
# A second shell process opens the same file: the index is in it, and a TEXT query is embedded.
out=$(sqlite3 -bail "$db" ".load dist/audiotext0" "SELECT s.label FROM v JOIN sounds s ON s.id = v.rowid WHERE e MATCH 'kitten' AND k = 1;" 2>&1)
check "audiotext_index KNN from another process, TEXT query" "a cat meowing" "$out"
rm -rf "$(dirname "$db")"

out=$(sqlite3 :memory: ".load dist/audiotext0" "SELECT text_embed('nope', 'x');" 2>&1)
check "unknown model is a clear error in the shell" "no model named 'nope': register it with INSERT INTO temp.audiotext_models" "$out"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
