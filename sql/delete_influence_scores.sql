-- Re-run safety for one stage's influence scores.
DELETE FROM influence_scores WHERE run_id = $run_id AND stage = $stage;
