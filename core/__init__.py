"""The base layer: settings, the DuckDB store, failpoints and seeds. Imports nothing of tasks, flows or the app."""
