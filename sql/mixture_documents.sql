-- THE query for a run's mixture: every selected document with its text, for training or export.
-- Usable from any DuckDB client: replace $run_id and $stage with values.
SELECT m.stage, m.doc_id, d.text, d.domain, d.source, d.n_tokens, m.cluster_id, m.score, m.round
FROM mixture_members m
JOIN documents d ON d.run_id = m.run_id AND d.doc_id = m.doc_id
WHERE m.run_id = $run_id AND m.stage = $stage
ORDER BY m.round, m.doc_id;
