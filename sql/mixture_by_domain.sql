-- A stage's mixture composition by domain: documents and token share.
SELECT d.domain, count(*) AS documents, sum(d.n_tokens) AS tokens,
       sum(d.n_tokens) / sum(sum(d.n_tokens)) OVER () AS token_share
FROM mixture_members m JOIN documents d ON d.run_id = m.run_id AND d.doc_id = m.doc_id
WHERE m.run_id = $run_id AND m.stage = $stage
GROUP BY d.domain ORDER BY tokens DESC, d.domain;
