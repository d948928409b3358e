"""Prefect flows: wiring only; the work lives in `tasks/`."""
