-- One stage's cascade measurements, in the order of the ranking they were cut from; `estimate` is what the
-- head is ordered by (rows from before it existed: the measured value).
SELECT doc_id, ranked, score, measured, COALESCE(estimate, measured) AS estimate
FROM reranked_documents WHERE run_id = $run_id AND stage = $stage ORDER BY ranked;
