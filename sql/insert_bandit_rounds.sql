-- Bulk insert of bandit rounds (Arrow relation `batch`).
INSERT INTO bandit_rounds (run_id, stage, round, cluster_id, ucb, n_sampled, reward, n_selected, tokens_selected, tokens_total, pull)
SELECT run_id, stage, round, cluster_id, ucb, n_sampled, reward, n_selected, tokens_selected, tokens_total, pull FROM batch;
