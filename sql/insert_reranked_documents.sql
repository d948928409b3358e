-- Bulk insert of the cascade's measurements (Arrow relation `batch`).
INSERT INTO reranked_documents (run_id, stage, doc_id, ranked, score, measured, oracle, variance, estimate)
SELECT run_id, stage, doc_id, ranked, score, measured, oracle, variance, estimate FROM batch;
