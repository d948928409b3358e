-- A run's documents with no cached vector for this model key, shortest first (batches of one length pad
-- least); content_hash breaks ties so the order, hence every batch, is the same on every runner.
SELECT d.content_hash, d.text FROM pool_documents d
WHERE d.run_id = $run_id
  AND NOT EXISTS (SELECT 1 FROM embedding_cache c WHERE c.content_hash = d.content_hash AND c.model_key = $model_key)
ORDER BY d.n_chars, d.content_hash, d.doc_id;
