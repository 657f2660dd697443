#!/bin/sh
# Creates the login roles of migrate, the daemons and the bots (docs/roles.md). The postgres
# image runs the scripts in /docker-entrypoint-initdb.d once, when it initialises an empty data
# directory. The logins get no privilege here: `sessionkeeper roles setup` (the compose `roles`
# service) makes each a member of its group role (sessionkeeper_owner, _daemon, _bot).
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v migrate="$SK_MIGRATE_DB_PASSWORD" -v daemon="$SK_DAEMON_DB_PASSWORD" \
    -v bot="$SK_BOT_DB_PASSWORD" <<'SQL'
CREATE ROLE sk_migrate LOGIN PASSWORD :'migrate';
CREATE ROLE sk_daemon LOGIN PASSWORD :'daemon';
CREATE ROLE sk_bot LOGIN PASSWORD :'bot';
SQL
