-- A run's centroids in cluster order.
SELECT cluster_id, size, centroid FROM clusters WHERE run_id = $run_id ORDER BY cluster_id;
