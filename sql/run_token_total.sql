-- A run's document count and total tokens under its proxy tokenizer.
SELECT count(*), sum(n_tokens) FROM documents WHERE run_id = $run_id;
