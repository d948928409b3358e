-- Bulk insert of dropped duplicates (Arrow relation `batch`).
INSERT INTO duplicates (run_id, doc_id, source, duplicate_of, kind, similarity)
SELECT run_id, doc_id, source, duplicate_of, kind, similarity FROM batch;
