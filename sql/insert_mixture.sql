-- A stage's mixture header.
INSERT INTO mixtures (run_id, stage, config_hash, token_budget, tokens, n_documents, created_at)
VALUES ($run_id, $stage, $config_hash, $token_budget, $tokens, $n_documents, now());
