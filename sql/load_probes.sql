-- A stage's measured documents: the influence model's training labels (split = train) and the ones held out to judge it.
SELECT doc_id, stage, label, exact_score, fast_score, split
FROM probes WHERE run_id = $run_id AND stage = $stage ORDER BY doc_id;
