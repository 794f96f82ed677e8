-- Runs once, when the postgres volume is first initialised. The tracking store lives in
-- POSTGRES_DB (mlflow); MLflow's basic-auth user store gets its own database so the two
-- sets of migrations never share a schema.
CREATE DATABASE mlflow_auth OWNER mlflow;
