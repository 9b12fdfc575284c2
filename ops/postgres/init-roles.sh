#!/bin/sh
# payrecon's database and its two roles, created once by the postgres image when it initialises an
# empty data directory (compose mounts this file into /docker-entrypoint-initdb.d/). It runs as the
# image's superuser, which payrecon itself never uses:
#   PAYRECON_DB_OWNER  owns the database and every table; `payrecon migrate` runs as it
#   PAYRECON_DB_APP    the worker, beat and commands; `payrecon migrate --grant-to` gives it data access
#                      only (no DDL, no TRUNCATE, the ledger append-only): it cannot disable the ledger's
#                      triggers or alter a table
# By hand, on a running server: POSTGRES_USER=postgres PAYRECON_DB_OWNER_PASSWORD=... \
#   PAYRECON_DB_APP_PASSWORD=... sh ops/postgres/init-roles.sh   (psql's PGHOST etc. say where)
set -eu

: "${POSTGRES_USER:?the superuser to connect as}"
: "${PAYRECON_DB_NAME:=payrecon}"
: "${PAYRECON_DB_OWNER:=payrecon_owner}"
: "${PAYRECON_DB_APP:=payrecon_app}"
: "${PAYRECON_DB_OWNER_PASSWORD:?set PAYRECON_DB_OWNER_PASSWORD (the migration role password)}"
: "${PAYRECON_DB_APP_PASSWORD:?set PAYRECON_DB_APP_PASSWORD (the application role password)}"

# psql quotes each value itself (:"name" an identifier, :'value' a literal): no shell interpolation in SQL.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
    -v db="$PAYRECON_DB_NAME" -v owner="$PAYRECON_DB_OWNER" -v app="$PAYRECON_DB_APP" \
    -v owner_password="$PAYRECON_DB_OWNER_PASSWORD" -v app_password="$PAYRECON_DB_APP_PASSWORD" <<'SQL'
CREATE ROLE :"owner" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_password';
CREATE ROLE :"app" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD :'app_password';
CREATE DATABASE :"db" OWNER :"owner";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO :"app";
SQL
echo "payrecon: database $PAYRECON_DB_NAME owned by $PAYRECON_DB_OWNER; application role $PAYRECON_DB_APP"
