-- First start of the compose/k8s PostgreSQL: one database per concern.
--   mlflow   MLflow's backend store (tracking + model registry)
--   mlflow_auth  MLflow's authentication store (accounts, roles, grants)
--   results  inference results and the ingest watcher's state
--   stac     pgstac, behind the STAC API the ingest watcher polls
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE results;
CREATE DATABASE stac;
\connect results
CREATE EXTENSION IF NOT EXISTS postgis;
\connect stac
CREATE EXTENSION IF NOT EXISTS postgis;
CREATE EXTENSION IF NOT EXISTS btree_gist;
