-- How many documents of a run have an embedding.
SELECT count(*) AS documents FROM embeddings WHERE run_id = $run_id;
