-- A run's mixture headers, one per stage.
SELECT stage, config_hash, token_budget, tokens, n_documents, created_at FROM mixtures
WHERE run_id = $run_id ORDER BY stage;
