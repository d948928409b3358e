-- The ids of a run's embedded documents, in doc_id order: what the cluster stage's fit sample is drawn from.
SELECT doc_id FROM embeddings WHERE run_id = $run_id ORDER BY doc_id;
