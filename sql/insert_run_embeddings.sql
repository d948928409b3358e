-- A run's `embeddings`, one row per document, from the content-addressed cache (every document's vector is
-- there once the embed stage has added the new ones).
INSERT INTO embeddings (run_id, doc_id, model, embedding)
SELECT d.run_id, d.doc_id, $model, c.embedding
FROM pool_documents d JOIN embedding_cache c ON c.content_hash = d.content_hash AND c.model_key = $model_key
WHERE d.run_id = $run_id
ORDER BY d.doc_id;
