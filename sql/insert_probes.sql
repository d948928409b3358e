-- Bulk insert of oracle probes (Arrow relation `batch`).
INSERT INTO probes (run_id, stage, doc_id, exact_score, fast_score, loss_before, loss_after, split)
SELECT run_id, stage, doc_id, exact_score, fast_score, loss_before, loss_after, split FROM batch;
