-- A run's document count and total tokens under its proxy tokenizer.
SELECT count(*) AS documents, sum(n_tokens) AS tokens FROM pool_documents WHERE run_id = $run_id;
