-- Bulk insert of cluster centroids (Arrow relation `batch`).
INSERT INTO clusters (run_id, cluster_id, size, centroid) SELECT run_id, cluster_id, size, centroid FROM batch;
