-- Once per file from before `embeddings` was a view: every run's copied vectors go into the cache under a
-- key of the run's own (the model's fingerprint was not kept), the run is pointed at that key, and the
-- table is dropped so that the schema can create the view. Nothing a run computed is lost.
INSERT INTO embedding_cache (content_hash, model_key, embedding)
SELECT d.content_hash, 'legacy:' || e.run_id, any_value(e.embedding)
FROM embeddings e JOIN documents d ON d.run_id = e.run_id AND d.doc_id = e.doc_id
GROUP BY d.content_hash, e.run_id
ON CONFLICT DO NOTHING;
INSERT OR REPLACE INTO run_embedding_models (run_id, model, model_key)
SELECT run_id, any_value(model), 'legacy:' || run_id FROM embeddings GROUP BY run_id;
DROP TABLE embeddings;
