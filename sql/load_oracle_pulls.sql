-- One stage's oracle bandit pulls in the order the bandit made them.
SELECT pull, cluster_id, ucb, n_measured, mean_value, group_reward, reward
FROM oracle_pulls WHERE run_id = $run_id AND stage = $stage ORDER BY pull;
