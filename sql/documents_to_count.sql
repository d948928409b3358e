-- A run's documents whose exact text has no token count under this tokenizer yet.
SELECT h.text_hash, h.text
FROM (SELECT sha256(text) AS text_hash, text FROM pool_documents WHERE run_id = $run_id) h
WHERE NOT EXISTS (SELECT 1 FROM token_counts t WHERE t.text_hash = h.text_hash AND t.tokenizer_hash = $tokenizer_hash);
