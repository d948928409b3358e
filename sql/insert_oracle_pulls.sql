-- Bulk insert of a stage's oracle bandit pulls (Arrow relation `batch`).
INSERT INTO oracle_pulls (run_id, stage, pull, cluster_id, ucb, n_measured, mean_value, group_reward, reward)
SELECT run_id, stage, pull, cluster_id, ucb, n_measured, mean_value, group_reward, reward FROM batch;
