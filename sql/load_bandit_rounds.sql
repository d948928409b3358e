-- One stage's bandit rounds in order.
SELECT round, cluster_id, ucb, n_sampled, reward, n_selected, tokens_selected, tokens_total
FROM bandit_rounds WHERE run_id = $run_id AND stage = $stage ORDER BY round, cluster_id;
