-- Re-run safety for ingest and the filter stage: drop this run's filter verdicts. $1 = run_id.
DELETE FROM filtered_documents WHERE run_id = $1;
