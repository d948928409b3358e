-- A run's document count and total tokens under its proxy tokenizer.
SELECT count(*) AS documents, sum(n_tokens) AS tokens FROM documents WHERE run_id = $run_id;
