#!/usr/bin/env bash
# Start the local PostgreSQL cluster and make sure the test role and database exist.
# Prints the SQLAlchemy URL to use as LABELLER_TEST_PG_URL.
set -euo pipefail
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
read -r version cluster _ < <(pg_lsclusters --no-header | head -n 1)
$sudo pg_ctlcluster "$version" "$cluster" start >/dev/null 2>&1 || true
for _ in $(seq 30); do
    $sudo -u postgres psql -qtAc "select 1" >/dev/null 2>&1 && break
    sleep 0.5
done 2>/dev/null || true
as_postgres() { if [ -z "$sudo" ]; then su postgres -c "$1"; else sudo -u postgres bash -c "$1"; fi; }
as_postgres "psql -qtAc \"select 1 from pg_roles where rolname='labeller'\"" | grep -q 1 \
    || as_postgres "psql -qc \"create user labeller superuser password 'labeller'\""
as_postgres "psql -qtAc \"select 1 from pg_database where datname='labeller'\"" | grep -q 1 \
    || as_postgres "createdb -O labeller labeller"
echo "postgresql+psycopg://labeller:labeller@127.0.0.1:5432/labeller"
