-- Exact token counts under the run's proxy tokenizer (Arrow relation `batch`: run_id, doc_id, n_tokens).
UPDATE documents SET n_tokens = batch.n_tokens
FROM batch WHERE documents.run_id = batch.run_id AND documents.doc_id = batch.doc_id;
