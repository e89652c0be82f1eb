#!/bin/bash
# What one ID-map row costs PostgreSQL, index by index: N mappings (default
# 100,000) inserted 1,000 a transaction, as a first load's page commits do,
# into copies of the state store's own `id_mappings` (made by BIN's
# migrations, so the table is today's): with every index, with none, and
# with each index alone. The rows have the shape `bench sync` writes:
# time-ordered mapping ids, source ids in read order, random (UUIDv5) target
# ids, a five-field base. Rows are staged in the database first, so the
# figures are the server's insert alone (no client, no arrays to decode).
# Prints seconds per variant; schema idm of the database `test` is made
# anew and dropped after.
#   bash benches/id-map-insert.sh target/release/syncd [N]
set -e
export PGOPTIONS='-c client_min_messages=warning'
BIN=$(realpath "$1"); N=${2:-100000}
P="psql -q -h 127.0.0.1 -U postgres -d test"
trap '$P -c "DROP SCHEMA IF EXISTS idm CASCADE"' EXIT
$P -c "DROP SCHEMA IF EXISTS idm CASCADE; CREATE SCHEMA idm"
"$BIN" runs list --db "postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3Didm" > /dev/null
$P <<SQL
SET search_path = idm;
CREATE TABLE stage AS
SELECT n,
  ('00000000-0000-7000-8000-' || lpad(to_hex(n), 12, '0'))::uuid AS id,
  'O' || lpad(n::text, 8, '0') AS source_id,
  -- a random-looking id, as a UUIDv5 of the create key is
  (substr(md5(n::text), 1, 8) || '-' || substr(md5(n::text), 9, 4) || '-5' || substr(md5(n::text), 14, 3) || '-8'
     || substr(md5(n::text), 18, 3) || '-' || substr(md5(n::text), 21, 12)) AS target_id,
  jsonb_build_object('account_id', 'A' || lpad((n % 10000)::text, 8, '0'), 'contact_id', 'C' || lpad((n % 30000)::text, 8, '0'),
    'total', 500.5, 'status', 'open', 'updated_at', '2026-01-01T00:00:00.000000Z') AS base
FROM generate_series(1, $N) n;
CREATE INDEX ON stage (n);
ANALYZE stage;
CREATE TABLE every_index (LIKE id_mappings INCLUDING ALL);
CREATE TABLE no_index (LIKE id_mappings INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
CREATE TABLE only_pkey (LIKE no_index INCLUDING ALL);
ALTER TABLE only_pkey ADD PRIMARY KEY (id, tenant_id);
CREATE TABLE only_by_source (LIKE no_index INCLUDING ALL);
CREATE TABLE only_by_target (LIKE no_index INCLUDING ALL);
CREATE TABLE only_verify_order (LIKE no_index INCLUDING ALL);
CREATE TABLE only_unsettled (LIKE no_index INCLUDING ALL);
SQL
# Each lone index is the state store's own definition, re-pointed at its table.
for idx in by_source by_target verify_order unsettled; do
  def=$($P -Atc "SELECT pg_get_indexdef('idm.id_mappings_$idx'::regclass)")
  $P -c "$(echo "$def" | sed -E "s/INDEX id_mappings_$idx ON idm\.id_mappings/INDEX ON idm.only_$idx/")"
  [ "$($P -Atc "SELECT count(*) FROM pg_indexes WHERE schemaname = 'idm' AND tablename = 'only_$idx'")" = 1 ] ||
    { echo "only_$idx did not get its index" >&2; exit 1; }
done
load() {
  local t=$1 f
  f=$(mktemp)
  for ((i = 0; i < N; i += 1000)); do
    echo "INSERT INTO idm.$t (id, tenant_id, integration_id, entity_type, source_id, target_id, status, base,
      idempotency_key, attempts, version, created_at, updated_at, scope)
      SELECT id, 'tenant-1', 'bench', 'order', source_id, target_id, 'mapped', base, 'f:' || source_id, 0, 1,
        now(), clock_timestamp(), 1 FROM idm.stage WHERE n > $i AND n <= $((i + 1000));"
  done > "$f"
  $P -c "TRUNCATE idm.$t; CHECKPOINT;"
  local s e
  s=$(date +%s.%N)
  $P -f "$f"
  e=$(date +%s.%N)
  rm -f "$f"
  printf '%-18s %6.3f s\n' "$t" "$(echo "$e - $s" | bc)"
}
for t in every_index no_index only_pkey only_by_source only_by_target only_verify_order only_unsettled; do
  load $t
done
