-- Re-run safety for ingest: drop this run's quarantined records before writing them again. $1 = run_id.
DELETE FROM quarantine WHERE run_id = $1;
