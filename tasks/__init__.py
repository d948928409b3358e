"""One module per pipeline stage: plain typed functions, each wrapped once as a Prefect task."""
