-- Every document's id and exact token count, in doc_id order: what the warm-up sample is drawn from.
SELECT doc_id, n_tokens FROM pool_documents WHERE run_id = $run_id ORDER BY doc_id;
