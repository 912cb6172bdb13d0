"""The contract every lelastic process shares: the job spec, the architecture registry, settings,
Redis key names, the job state machine, records, the queue glue, the data dir and logging.

Torch-free and FastAPI-free (pydantic, redis, rq and the standard library), so the API image, the
workers and the command line all import it. Nothing here imports `service.api`, `service.cli` or
`workers`; `make lint` checks that with import-linter.
"""
