-- Bulk insert of a stage's oracle measurements (Arrow relation `batch`).
INSERT INTO probes (run_id, stage, doc_id, exact_score, fast_score, loss_before, loss_after, split, label, pull, oracle)
SELECT run_id, stage, doc_id, exact_score, fast_score, loss_before, loss_after, split, label, pull, oracle FROM batch;
