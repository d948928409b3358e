-- The model key a run's `embeddings` read from, if its embed stage has run.
SELECT model, model_key FROM run_embedding_models WHERE run_id = $run_id;
