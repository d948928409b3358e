-- Documents and characters a run ingested per domain (before the filter stage).
SELECT domain, count(*) AS documents, sum(n_chars) AS chars FROM documents WHERE run_id = $run_id
GROUP BY domain ORDER BY domain;
