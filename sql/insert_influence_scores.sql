-- Bulk insert of influence-model scores (Arrow relation `batch`).
INSERT INTO influence_scores (run_id, stage, doc_id, score) SELECT run_id, stage, doc_id, score FROM batch;
