-- The deduplicated pool's composition by domain, to compare a mixture against.
SELECT domain, count(*) AS documents, sum(n_tokens) AS tokens,
       sum(n_tokens) / sum(sum(n_tokens)) OVER () AS token_share
FROM pool_documents WHERE run_id = $run_id GROUP BY domain ORDER BY tokens DESC, domain;
