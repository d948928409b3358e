-- Replace a stage's mixture header (inside the same transaction as its members).
DELETE FROM mixtures WHERE run_id = $run_id AND stage = $stage;
