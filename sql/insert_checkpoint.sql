-- One proxy-LM checkpoint per run and stage (re-running a stage replaces its row).
INSERT OR REPLACE INTO checkpoints
    (run_id, stage, path, n_params, train_tokens, steps, final_train_loss, reference_loss, tokens_per_s)
VALUES ($run_id, $stage, $path, $n_params, $train_tokens, $steps, $final_train_loss, $reference_loss, $tokens_per_s);
