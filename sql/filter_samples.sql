-- Up to $per_domain documents per filter and domain that the filter rejected, a seeded sample, with their
-- text's start: what a curator reads to judge the filter.
SELECT filter, domain, doc_id, detail, n_chars, left(text, $chars) AS text FROM (
    SELECT f.filter, d.domain, d.doc_id, f.detail, d.n_chars, d.text,
           row_number() OVER (PARTITION BY f.filter, d.domain ORDER BY hash(d.doc_id || $seed), d.doc_id) AS rank
    FROM filtered_documents f JOIN documents d ON d.run_id = f.run_id AND d.doc_id = f.doc_id
    WHERE f.run_id = $run_id
) WHERE rank <= $per_domain
ORDER BY filter, domain, rank;
