-- Re-run safety for one stage's cascade measurements.
DELETE FROM reranked_documents WHERE run_id = $run_id AND stage = $stage;
