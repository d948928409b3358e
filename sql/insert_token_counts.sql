-- New content-addressed token counts (Arrow relation `batch`: text_hash, tokenizer_hash, n_tokens).
INSERT INTO token_counts (text_hash, tokenizer_hash, n_tokens)
SELECT text_hash, tokenizer_hash, n_tokens FROM batch
ON CONFLICT DO NOTHING;
