-- Bulk insert of document embeddings (Arrow relation `batch`).
INSERT INTO embeddings (run_id, doc_id, model, embedding) SELECT run_id, doc_id, model, embedding FROM batch;
