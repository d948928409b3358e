-- The documents a stage may probe or select: every clustered pool document of the run, minus (with
-- $exclude_previous) those already in an earlier stage's mixture, with the stage's influence score (NULL
-- before the distill stage has scored it). In doc_id order; core/store.py puts them in the seeded
-- cluster-stratified order (so the order never depends on DuckDB's hash function).
SELECT a.doc_id, a.cluster_id, COALESCE(d.n_tokens, 0) AS n_tokens, s.score
FROM cluster_assignments a
JOIN pool_documents d ON d.run_id = a.run_id AND d.doc_id = a.doc_id
LEFT JOIN influence_scores s ON s.run_id = a.run_id AND s.stage = $stage AND s.doc_id = a.doc_id
WHERE a.run_id = $run_id
  AND NOT ($exclude_previous AND a.doc_id IN (
      SELECT doc_id FROM mixture_members WHERE run_id = $run_id AND stage < $stage))
ORDER BY a.doc_id;
