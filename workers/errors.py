"""Errors a job can end with.

JobFailure          the job cannot be done as specified; its message is the reason the client sees
└── JobCanceled     the job was canceled while it ran (its record is already final)
"""


class JobFailure(Exception):
    """The job fails with this message as its readable reason."""


class JobCanceled(JobFailure):
    """The job's record turned final (canceled) while the job was running."""
