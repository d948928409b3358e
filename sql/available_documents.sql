-- Documents a stage may still pick: clustered, and (when exclude_previous) not in an earlier stage's mixture.
-- Ordered round-robin across clusters by a seeded hash, so any prefix is a cluster-stratified sample.
SELECT a.doc_id, a.cluster_id, d.n_tokens
FROM (
    SELECT doc_id, cluster_id,
           row_number() OVER (PARTITION BY cluster_id ORDER BY hash(doc_id || $seed), doc_id) AS rank_in_cluster
    FROM cluster_assignments
    WHERE run_id = $run_id
      AND NOT ($exclude_previous AND doc_id IN (
          SELECT doc_id FROM mixture_members WHERE run_id = $run_id AND stage < $stage))
) a
JOIN pool_documents d ON d.run_id = $run_id AND d.doc_id = a.doc_id
ORDER BY a.rank_in_cluster, hash(a.doc_id || $seed), a.doc_id;
