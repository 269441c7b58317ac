#!/bin/sh
# Runs once, when the postgres volume is created: the second database, for Optuna studies.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "CREATE DATABASE \"$OPTUNA_DB\";"
