-- Re-run safety: a stage first removes its own earlier output for this run.
DELETE FROM embeddings WHERE run_id = $run_id;
