-- One stage's bandit pulls in the order the bandit made them (tokens_total only grows along it).
SELECT round, cluster_id, ucb, n_sampled, reward, n_selected, tokens_selected, tokens_total
FROM bandit_rounds WHERE run_id = $run_id AND stage = $stage ORDER BY pull, round, cluster_id;
