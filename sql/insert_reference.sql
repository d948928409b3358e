-- Bulk insert of a batch of reference documents (Arrow relation `batch`).
INSERT INTO reference_documents (run_id, ref_id, text, domain)
SELECT run_id, ref_id, text, domain FROM batch;
