-- Bulk insert of a batch of clean documents (Arrow relation `batch`); n_tokens comes with the tokenizer.
INSERT INTO documents (run_id, doc_id, text, source, locator, domain, n_chars, n_tokens, content_hash)
SELECT run_id, doc_id, text, source, locator, domain, n_chars, NULL, content_hash FROM batch;
