-- Every document of a run gets its exact token count under the run's tokenizer from `token_counts`.
UPDATE documents SET n_tokens = t.n_tokens
FROM token_counts t
WHERE documents.run_id = $run_id AND t.tokenizer_hash = $tokenizer_hash AND t.text_hash = sha256(documents.text);
