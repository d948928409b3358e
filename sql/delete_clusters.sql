-- Re-run safety for the clustering stage: centroids.
DELETE FROM clusters WHERE run_id = $run_id;
