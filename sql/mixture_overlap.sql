-- Documents selected (in any stage) by both runs, and by either: the Jaccard overlap of two mixtures.
WITH a AS (SELECT DISTINCT doc_id FROM mixture_members WHERE run_id = $run_a),
     b AS (SELECT DISTINCT doc_id FROM mixture_members WHERE run_id = $run_b)
SELECT (SELECT count(*) FROM a JOIN b USING (doc_id)) AS shared,
       (SELECT count(*) FROM (SELECT doc_id FROM a UNION SELECT doc_id FROM b)) AS either;
