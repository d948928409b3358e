-- Bulk insert of filter verdicts (Arrow relation `batch`).
INSERT INTO filtered_documents (run_id, doc_id, filter, detail)
SELECT run_id, doc_id, filter, detail FROM batch;
