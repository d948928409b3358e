-- Stage 0's training data: a seeded uniform sample of the pool, cut at the token budget.
SELECT doc_id, text FROM (
    SELECT doc_id, text,
           sum(n_tokens) OVER (ORDER BY hash(doc_id || $seed), doc_id ROWS UNBOUNDED PRECEDING) AS cumulative
    FROM pool_documents WHERE run_id = $run_id
) WHERE cumulative <= $budget
ORDER BY doc_id;
