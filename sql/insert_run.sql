-- Register a run (or restart one with the same id): its config, hash, start time and the process running it.
INSERT OR REPLACE INTO runs (run_id, config_hash, config_json, status, started_at, finished_at, mlflow_run_id,
                             prefect_flow_run_id, host, pid)
VALUES ($run_id, $config_hash, $config_json, 'running', now(), NULL, NULL, $prefect_flow_run_id, $host, $pid);
