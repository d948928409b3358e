-- Re-run safety for one stage's probes.
DELETE FROM probes WHERE run_id = $run_id AND stage = $stage;
