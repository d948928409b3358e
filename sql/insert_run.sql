-- Register a run (or restart one with the same id): its config, hash, start time, the process running it and
-- the MLflow run it is tracked in from its first stage on.
INSERT OR REPLACE INTO runs (run_id, config_hash, config_json, status, started_at, finished_at, mlflow_run_id,
                             prefect_flow_run_id, host, pid)
VALUES ($run_id, $config_hash, $config_json, 'running', now(), NULL, $mlflow_run_id, $prefect_flow_run_id, $host, $pid);
