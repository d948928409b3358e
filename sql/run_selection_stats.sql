-- One run's selection at a glance: per stage, mixture size and influence, and the proxy LM's reference loss.
SELECT x.stage, x.tokens, x.token_budget, x.n_documents,
       avg(m.score) AS mean_score, stddev_pop(m.score) AS std_score,
       any_value(c.reference_loss) AS reference_loss,
       count(DISTINCT m.cluster_id) AS clusters_used
FROM mixtures x
JOIN mixture_members m ON m.run_id = x.run_id AND m.stage = x.stage
LEFT JOIN checkpoints c ON c.run_id = x.run_id AND c.stage = x.stage
WHERE x.run_id = $run_id
GROUP BY x.stage, x.tokens, x.token_budget, x.n_documents
ORDER BY x.stage;
