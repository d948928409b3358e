-- Number of clean documents in a run.
SELECT count(*) FROM documents WHERE run_id = $run_id;
