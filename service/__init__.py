"""lelastic's API side: the job spec, settings, records, storage and the HTTP service."""

__version__ = "0.1.0"
