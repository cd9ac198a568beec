#!/bin/sh
# MLflow's tracking server with its authentication app (basic auth), as the local stack, compose
# and Kubernetes run it: writes the auth app's settings from the environment, then
# `exec mlflow server --app-name basic-auth "$@"`.
#
#   MLFLOW_BACKEND_STORE_URI        the tracking store, e.g. postgresql://...; `mlflow server` reads
#                                   it itself (rather than --backend-store-uri, which ps shows)
#   MLFLOW_AUTH_DATABASE_URI        the auth store (users, roles, grants), e.g. postgresql://...
#   MLFLOW_AUTH_ADMIN_USERNAME      the admin made on the first start (default eostream-admin)
#   MLFLOW_AUTH_ADMIN_PASSWORD      its password (read only while the auth store is empty)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  CSRF key of the login form; the same across restarts
#   MLFLOW_AUTH_CONFIG_PATH         where to write the settings (default /tmp/basic_auth.ini)
#   MLFLOW_BIN                      the mlflow command (default: mlflow on PATH)
#
# default_permission NO_PERMISSIONS: an account sees only what it made or was granted
# (deploy/mlflow/init_auth.py makes the eostream accounts and grants). Checking a password
# (PBKDF2) costs ~0.9 s of CPU, on every request: a checked password is cached for 10 minutes
# (per worker; a password changed over the API takes effect at once on one worker).
set -eu
: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI (the auth store)}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY}"
MLFLOW_AUTH_ADMIN_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME:-eostream-admin}"
MLFLOW_AUTH_CONFIG_PATH="${MLFLOW_AUTH_CONFIG_PATH:-/tmp/basic_auth.ini}"
export MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
export MLFLOW_AUTH_CONFIG_PATH

umask 077 # the file names the auth store, with its password
rm -f "$MLFLOW_AUTH_CONFIG_PATH"
cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = $MLFLOW_AUTH_DATABASE_URI
admin_username = $MLFLOW_AUTH_ADMIN_USERNAME
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 600
INI
unset MLFLOW_AUTH_DATABASE_URI
exec "${MLFLOW_BIN:-mlflow}" server --app-name basic-auth "$@"
