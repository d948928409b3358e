-- One stage's influence scores.
SELECT doc_id, score FROM influence_scores WHERE run_id = $run_id AND stage = $stage;
