-- Texts for a list of document ids.
SELECT doc_id, text FROM documents WHERE run_id = $run_id AND list_contains($doc_ids, doc_id) ORDER BY doc_id;
