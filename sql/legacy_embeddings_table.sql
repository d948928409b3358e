-- Whether this file still holds the per-run `embeddings` table of influmix before it became a view over
-- `embedding_cache` (core/db.py migrates it once).
SELECT count(*) AS tables FROM duckdb_tables()
WHERE database_name = current_database() AND schema_name = 'main' AND table_name = 'embeddings';
