-- Number of documents in a run's pool (clean, deduplicated, not filtered).
SELECT count(*) AS documents FROM pool_documents WHERE run_id = $run_id;
