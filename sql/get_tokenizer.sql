-- The proxy tokenizer an earlier run trained on the same sample (see `tokenizers` in schema.sql).
SELECT tokenizer_hash, tokenizer_json FROM tokenizers WHERE sample_key = $sample_key;
