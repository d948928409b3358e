-- Replace a stage's mixture members (inside the same transaction as its header).
DELETE FROM mixture_members WHERE run_id = $run_id AND stage = $stage;
