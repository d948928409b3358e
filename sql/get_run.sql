-- One run's header.
SELECT run_id, config_hash, config_json, status, started_at, finished_at, mlflow_run_id, prefect_flow_run_id,
       host, pid
FROM runs WHERE run_id = $run_id;
