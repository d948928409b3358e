-- Where a stage's checkpoint lives.
SELECT path, reference_loss FROM checkpoints WHERE run_id = $run_id AND stage = $stage;
