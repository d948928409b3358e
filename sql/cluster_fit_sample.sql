-- The embeddings k-means is fitted on, in doc_id order: every row whose seeded hash is at or below
-- $threshold (the largest UBIGINT keeps them all), so the sample is uniform and only it is sorted.
SELECT doc_id, embedding FROM embeddings
WHERE run_id = $run_id AND hash(doc_id || $seed) <= $threshold
ORDER BY doc_id;
