-- Bulk insert of document -> cluster assignments (Arrow relation `batch`).
INSERT INTO cluster_assignments (run_id, doc_id, cluster_id, distance) SELECT run_id, doc_id, cluster_id, distance FROM batch;
