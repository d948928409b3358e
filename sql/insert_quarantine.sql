-- Bulk insert of records that could not be used (Arrow relation `batch`).
INSERT INTO quarantine (run_id, source, locator, reason, detail, excerpt)
SELECT run_id, source, locator, reason, detail, excerpt FROM batch;
