-- A stage's probes: the influence model's training labels (split = train) and the exact probes held out to judge it.
SELECT doc_id, stage, exact_score, fast_score, split
FROM probes WHERE run_id = $run_id AND stage = $stage ORDER BY doc_id;
