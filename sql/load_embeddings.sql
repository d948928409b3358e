-- A run's embeddings in doc_id order (the order every stage uses to line arrays up), pool documents only:
-- a document the filter stage rejected after it was embedded is left out.
SELECT e.doc_id, e.embedding FROM embeddings e
WHERE e.run_id = $run_id
  AND NOT EXISTS (SELECT 1 FROM filtered_documents f WHERE f.run_id = e.run_id AND f.doc_id = e.doc_id)
ORDER BY e.doc_id;
