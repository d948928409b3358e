-- Keyset pagination over a run's pool (stable order, O(page) per call at any corpus size).
SELECT doc_id, text FROM pool_documents
WHERE run_id = $run_id AND doc_id > $after
ORDER BY doc_id
LIMIT $page_size;
