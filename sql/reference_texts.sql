-- The reference (target) set the proxy LM's loss is measured on.
SELECT ref_id, text FROM reference_documents WHERE run_id = $run_id ORDER BY ref_id;
