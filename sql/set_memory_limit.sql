-- Cap DuckDB's memory (buffer pool of table blocks read, sorts, indexes) for this database instance; it
-- spills to its temp folder or evicts cached blocks beyond that.
SET memory_limit = $limit;
