-- Number of documents a run ingested, before the filter stage's verdicts.
SELECT count(*) AS documents FROM documents WHERE run_id = $run_id;
