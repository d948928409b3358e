-- Mark the run of a failed Prefect flow run as failed, so `influmix runs` tells the truth; the MLflow run id
-- comes back so the failure hook can mark that run failed too.
UPDATE runs SET status = 'failed', finished_at = now() WHERE prefect_flow_run_id = $prefect_flow_run_id AND status = 'running'
RETURNING run_id, mlflow_run_id;
