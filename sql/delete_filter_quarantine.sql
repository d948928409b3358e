-- Re-run safety for the filter stage: drop the quarantine rows it wrote (their reason names a filter).
DELETE FROM quarantine WHERE run_id = $run_id AND list_contains($filters, reason);
