-- Re-run safety for load_reference: drop this run's reference documents before writing them again. $1 = run_id.
DELETE FROM reference_documents WHERE run_id = $1;
