-- Every run, newest first.
SELECT run_id, status, started_at, finished_at, config_hash FROM runs ORDER BY started_at DESC;
