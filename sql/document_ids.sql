-- Every document id of a run, in doc_id order: what seeded samples of the pool are drawn from.
SELECT doc_id FROM pool_documents WHERE run_id = $run_id ORDER BY doc_id;
