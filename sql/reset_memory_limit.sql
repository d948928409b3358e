-- Back to DuckDB's default memory limit (80% of RAM).
RESET memory_limit;
