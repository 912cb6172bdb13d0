"""What the API does, behind the HTTP routes. Routes parse a request, call one use case and shape its response.

    queries     read the tenant's jobs and datasets (one by id, or a list)
    submit      submit a job: check, admit, record, enqueue (and undo on failure)
    results     a succeeded job's result and its artifact files
    purge       cancel a job, or purge a final job's record and files
    datasets    store an uploaded dataset or weights; delete a dataset
    readiness   whether this process can do useful work (Redis, data dir, workers)

Use cases raise the errors of `service.api.errors`; the API's error handlers turn them into responses.
"""
