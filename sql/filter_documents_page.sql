-- Keyset pagination over every document a run ingested, filtered or not: the filter stage judges them all anew.
SELECT doc_id, text, source, locator, domain FROM documents
WHERE run_id = $run_id AND doc_id > $after
ORDER BY doc_id
LIMIT $page_size;
