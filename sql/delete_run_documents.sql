-- Re-run safety for ingest: drop this run's clean documents before writing them again. $1 = run_id.
DELETE FROM documents WHERE run_id = $1;
