-- Re-run safety for one stage's bandit rounds.
DELETE FROM bandit_rounds WHERE run_id = $run_id AND stage = $stage;
