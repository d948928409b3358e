-- Documents and characters any filter rejects in a run, per domain (each document once).
SELECT d.domain, count(*) AS documents, sum(d.n_chars) AS chars FROM documents d
WHERE d.run_id = $run_id AND EXISTS (SELECT 1 FROM filtered_documents f WHERE f.run_id = d.run_id AND f.doc_id = d.doc_id)
GROUP BY d.domain ORDER BY d.domain;
