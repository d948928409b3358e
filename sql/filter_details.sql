-- Every filter verdict of a run with its document's id and domain: which rule fired, where.
SELECT f.filter, d.domain, f.detail, f.doc_id
FROM filtered_documents f JOIN documents d ON d.run_id = f.run_id AND d.doc_id = f.doc_id
WHERE f.run_id = $run_id;
