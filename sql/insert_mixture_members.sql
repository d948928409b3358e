-- Bulk insert of a mixture's members (Arrow relation `batch`).
INSERT INTO mixture_members (run_id, stage, doc_id, cluster_id, score, round)
SELECT run_id, stage, doc_id, cluster_id, score, round FROM batch;
