-- The texts of one stage's selected mixture: what the next stage trains on.
SELECT d.doc_id, d.text
FROM mixture_members m JOIN documents d ON d.run_id = m.run_id AND d.doc_id = m.doc_id
WHERE m.run_id = $run_id AND m.stage = $stage
ORDER BY d.doc_id;
