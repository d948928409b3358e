-- The texts of the documents listed in the registered relation `wanted` (one column, doc_id), by doc_id.
-- A join rather than list_contains: a list parameter is scanned once per row, a join is hashed once.
SELECT d.doc_id, d.text
FROM documents d JOIN wanted w ON w.doc_id = d.doc_id
WHERE d.run_id = $run_id
ORDER BY d.doc_id;
