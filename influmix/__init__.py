"""influmix: model-aware pretraining data curation.

The pipeline lives in `flows/` (Prefect wiring), `tasks/` (one module per stage) and `models/`
(pure torch/numpy science). This package holds what they share: settings, the DuckDB layer and the CLI.
"""

__version__ = "0.1.0"
