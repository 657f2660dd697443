#!/bin/sh
# Creates the read-only role Grafana's PostgreSQL datasource uses. The postgres image runs the
# scripts in /docker-entrypoint-initdb.d once, when it initialises an empty data directory.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v role="${GRAFANA_DB_USER:-grafana}" -v password="$GRAFANA_DB_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
-- Reads every table (PostgreSQL 14+), writes none.
GRANT pg_read_all_data TO :"role";
ALTER ROLE :"role" SET default_transaction_read_only = on;
ALTER ROLE :"role" SET statement_timeout = '30s';
SQL
