-- How many documents two filters both reject in a run (a = b: the filter's own count).
SELECT a.filter AS a, b.filter AS b, count(*) AS documents
FROM filtered_documents a JOIN filtered_documents b ON b.run_id = a.run_id AND b.doc_id = a.doc_id
WHERE a.run_id = $run_id
GROUP BY ALL ORDER BY ALL;
