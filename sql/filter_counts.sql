-- Documents and characters each filter rejects in a run, per domain (a document may count under several filters).
SELECT f.filter, d.domain, count(*) AS documents, sum(d.n_chars) AS chars
FROM filtered_documents f JOIN documents d ON d.run_id = f.run_id AND d.doc_id = f.doc_id
WHERE f.run_id = $run_id
GROUP BY ALL ORDER BY f.filter, d.domain;
