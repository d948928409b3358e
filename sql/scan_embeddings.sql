-- A run's embeddings in storage order (the order they were inserted in: the embed stage inserts them by
-- doc_id): a stream DuckDB need not sort, for passes over every row that do not line arrays up.
SELECT doc_id, embedding FROM embeddings WHERE run_id = $run_id;
