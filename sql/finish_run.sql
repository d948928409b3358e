-- Close a run: final status and the ids that link it to MLflow and Prefect.
UPDATE runs SET status = $status, finished_at = now(), mlflow_run_id = coalesce($mlflow_run_id, mlflow_run_id)
WHERE run_id = $run_id;
