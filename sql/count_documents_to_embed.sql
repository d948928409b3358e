-- How many of a run's documents have no vector in `embedding_cache` for this embedding model key.
SELECT count(*) AS documents FROM pool_documents d
WHERE d.run_id = $run_id
  AND NOT EXISTS (SELECT 1 FROM embedding_cache c WHERE c.content_hash = d.content_hash AND c.model_key = $model_key);
