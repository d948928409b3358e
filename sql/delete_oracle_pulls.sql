-- Re-run safety for one stage's oracle pulls.
DELETE FROM oracle_pulls WHERE run_id = $run_id AND stage = $stage;
