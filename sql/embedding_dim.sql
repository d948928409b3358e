-- The width of a run's embeddings (NULL-free: every row has the same length).
SELECT len(embedding) AS dim FROM embeddings WHERE run_id = $run_id LIMIT 1;
