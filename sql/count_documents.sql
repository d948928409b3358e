-- Number of clean documents in a run.
SELECT count(*) AS documents FROM documents WHERE run_id = $run_id;
