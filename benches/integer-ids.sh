#!/bin/bash
# A first load of N products (text ids) from PostgreSQL into a PostgreSQL
# table whose ids the database assigns (bigserial, `idempotency_column =
# "sync_key"`), with or without an index on that column, by `syncd run`;
# prints the seconds it took. With `restore` last, it times instead the
# run after that load against an empty state store (as restored from a
# backup taken before it), which finds every row by its key. Schemas ib_src,
# ib_dst and ib_state of the database `test` are made anew and dropped after.
#   bash benches/integer-ids.sh target/release/syncd yes 100000 [restore]
set -e
export PGOPTIONS='-c client_min_messages=warning'
BIN=$(realpath "$1"); IDX=$2; N=${3:-100000}; MODE=${4:-first}
P="psql -q -h 127.0.0.1 -U postgres -d test"
$P -c "DROP SCHEMA IF EXISTS ib_src CASCADE; DROP SCHEMA IF EXISTS ib_dst CASCADE; DROP SCHEMA IF EXISTS ib_state CASCADE; CREATE SCHEMA ib_src; CREATE SCHEMA ib_dst; CREATE SCHEMA ib_state;"
$P -c "CREATE TABLE ib_src.products (id text PRIMARY KEY, title text, updated_at timestamptz NOT NULL); CREATE INDEX ON ib_src.products (updated_at, id);
INSERT INTO ib_src.products SELECT 'P' || lpad(i::text, 8, '0'), 'Product ' || i, timestamp '2026-01-01' + i * interval '1 ms' FROM generate_series(1, $N) i;
CREATE TABLE ib_dst.products (id bigserial PRIMARY KEY, title text, sync_key text, updated_at timestamptz NOT NULL); CREATE INDEX ON ib_dst.products (updated_at, id);"
if [ "$IDX" = yes ]; then $P -c "CREATE UNIQUE INDEX ON ib_dst.products (sync_key)"; fi
U="postgres://postgres@127.0.0.1:5432/test"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/wf.toml" <<TOML
name = "ib"
direction = "one_way"
source = "src"
target = "dst"
[systems.src]
connector = "sql"
url = "$U?options=-c%20search_path%3Dib_src"
[systems.dst]
connector = "sql"
url = "$U?options=-c%20search_path%3Dib_dst"
[[entities]]
name = "product"
table = "products"
idempotency_column = "sync_key"
[tenants.t1]
TOML
cd "$work"
if [ "$MODE" = restore ]; then
  $BIN --db "$U?options=-c%20search_path%3Dib_state" run wf.toml --tenant t1 > out.log 2>&1 || { tail -5 out.log; exit 1; }
  $P -c "DROP SCHEMA ib_state CASCADE; CREATE SCHEMA ib_state;"
fi
start=$(date +%s.%N)
$BIN --db "$U?options=-c%20search_path%3Dib_state" run wf.toml --tenant t1 > out.log 2>&1 || { tail -5 out.log; exit 1; }
end=$(date +%s.%N)
rows=$($P -t -c "SELECT count(*) FROM ib_dst.products")
echo "$BIN $MODE index=$IDX n=$N rows=$rows seconds=$(echo "$end - $start" | bc)"
$P -c "DROP SCHEMA ib_src CASCADE; DROP SCHEMA ib_dst CASCADE; DROP SCHEMA ib_state CASCADE;"
