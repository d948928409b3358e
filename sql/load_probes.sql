-- One stage's probes in doc_id order.
SELECT doc_id, exact_score, fast_score, split FROM probes WHERE run_id = $run_id AND stage = $stage ORDER BY doc_id;
