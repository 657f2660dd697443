#!/bin/sh
# Creates the login Grafana's PostgreSQL datasource uses. The postgres image runs the scripts in
# /docker-entrypoint-initdb.d once, when it initialises an empty data directory.
# The login gets no privilege here: `sessionkeeper roles setup --reader-login grafana` (the
# compose `roles` service) makes it a member of sessionkeeper_reader, which reads counts and
# job tables but never message content, link codes or user_key_secret (docs/roles.md). Never
# grant it pg_read_all_data: that includes the secret that keys the user ids.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v role="${GRAFANA_DB_USER:-grafana}" -v password="$GRAFANA_DB_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
ALTER ROLE :"role" SET default_transaction_read_only = on;
ALTER ROLE :"role" SET statement_timeout = '30s';
SQL
