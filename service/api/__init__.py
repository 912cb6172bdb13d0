"""The HTTP API: the FastAPI app, its dependencies, routes that only translate HTTP, and the use cases
behind them. Never imports torch, scikit-learn or `workers` (checked by import-linter in `make lint`)."""
