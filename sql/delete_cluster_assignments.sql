-- Re-run safety for the clustering stage: assignments.
DELETE FROM cluster_assignments WHERE run_id = $run_id;
