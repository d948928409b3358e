-- One stage's cascade measurements, in the order of the ranking they were cut from.
SELECT doc_id, ranked, score, measured FROM reranked_documents WHERE run_id = $run_id AND stage = $stage ORDER BY ranked;
