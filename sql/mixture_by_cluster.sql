-- A stage's mixture composition by cluster, next to each cluster's size in the pool.
SELECT m.cluster_id, count(*) AS documents, sum(d.n_tokens) AS tokens,
       sum(d.n_tokens) / sum(sum(d.n_tokens)) OVER () AS token_share, avg(m.score) AS mean_score,
       any_value(c.size) AS cluster_size
FROM mixture_members m
JOIN documents d ON d.run_id = m.run_id AND d.doc_id = m.doc_id
JOIN clusters c ON c.run_id = m.run_id AND c.cluster_id = m.cluster_id
WHERE m.run_id = $run_id AND m.stage = $stage
GROUP BY m.cluster_id ORDER BY tokens DESC, m.cluster_id;
