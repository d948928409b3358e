-- A run's embeddings in doc_id order (the order every stage uses to line arrays up).
SELECT doc_id, embedding FROM embeddings WHERE run_id = $run_id ORDER BY doc_id;
