-- Point a run's `embeddings` at the cached vectors of one model key (a re-run with another model replaces it).
INSERT OR REPLACE INTO run_embedding_models (run_id, model, model_key) VALUES ($run_id, $model, $model_key);
