-- The embeddings k-means is fitted on, in doc_id order: the documents listed in the registered relation
-- `wanted` (core/seeds.py draws them), so only the sample is sorted, never the whole matrix.
SELECT e.doc_id, e.embedding
FROM embeddings e JOIN wanted w ON w.doc_id = e.doc_id
WHERE e.run_id = $run_id
ORDER BY e.doc_id;
