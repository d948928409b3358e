-- Re-run safety for ingest: drop this run's recorded duplicates before writing them again. $1 = run_id.
DELETE FROM duplicates WHERE run_id = $1;
