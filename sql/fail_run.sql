-- Mark the run of a failed Prefect flow run as failed, so `influmix runs` tells the truth.
UPDATE runs SET status = 'failed', finished_at = now() WHERE prefect_flow_run_id = $prefect_flow_run_id AND status = 'running';
