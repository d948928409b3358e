-- The training labels of the stages in [$first_stage, $stage), for an influence model that learns from history.
SELECT doc_id, stage, label, exact_score, fast_score, split
FROM probes
WHERE run_id = $run_id AND stage >= $first_stage AND stage < $stage AND split = 'train'
ORDER BY stage, doc_id;
