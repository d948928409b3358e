-- A newly trained proxy tokenizer, by the sample it was trained on.
INSERT INTO tokenizers (sample_key, tokenizer_hash, tokenizer_json) VALUES ($sample_key, $tokenizer_hash, $tokenizer_json)
ON CONFLICT DO NOTHING;
