-- A seeded pseudo-random sample of documents to train the proxy BPE tokenizer on.
SELECT text FROM pool_documents WHERE run_id = $run_id ORDER BY hash(doc_id || $seed), doc_id LIMIT $limit;
