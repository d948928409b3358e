-- The pool as an MLflow dataset: ids and metadata, no text (the text stays in DuckDB).
SELECT doc_id, source, domain, n_chars, n_tokens, content_hash FROM pool_documents WHERE run_id = $run_id ORDER BY doc_id;
