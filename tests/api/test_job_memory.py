"""A spec whose estimated peak memory exceeds max_job_memory is refused with a 422 naming the setting."""

from __future__ import annotations

from service.contract.spec import EXAMPLE_SPEC
from tests.factories import DIGITS_3_5, app_client, assert_names, submit

HUGE = {
    "dataset": {"builtin": "two_cycles", "n": 32768},
    "primary": None,
    "auxiliary": None,
    "model": {"arch": "mlp", "width": 65536, "depth": 2},
    "weights": {"source": "init"},
    "similarity": {"kind": "kernelized", "step": 0, "repeats": 20},
    "clustering": {"k": 100, "method": "spectral"},
    "execution": {"mode": "single"},
}


def test_a_spec_within_every_other_limit_but_too_big_for_memory_is_refused(settings):
    with app_client(settings, max_examples=50_000) as client:
        response = submit(client, **HUGE)
        detail = assert_names(
            response,
            422,
            "the job's estimated peak memory (",
            "with n = 32768",
            "similarity stage: hidden activations 64.0 GiB",
            "exceeds max_job_memory = 8589934592 bytes (LELASTIC_MAX_JOB_MEMORY)",
        )
        assert [d["loc"] for d in detail] == [["body", "model"]]  # the width drives it
        assert detail[0]["input"] > 64 * 2**30
        assert detail[0]["ctx"] == {"limit": "max_job_memory", "allowed": 8 * 2**30, "env": "LELASTIC_MAX_JOB_MEMORY"}


def test_the_matrix_driven_estimate_points_at_the_primary_selection(settings):
    with app_client(settings, max_job_memory=1536 * 2**20) as client:
        narrow = {**HUGE, "dataset": {"builtin": "two_cycles", "n": 8000}, "model": {"arch": "mlp", "width": 64}}
        detail = assert_names(submit(client, **narrow), 422, "matrices", "LELASTIC_MAX_JOB_MEMORY")
        assert [d["loc"] for d in detail] == [["body", "primary"]]


def test_the_demo_and_the_default_job_are_accepted(settings):
    with app_client(settings) as client:
        assert submit(client, EXAMPLE_SPEC).status_code == 202
        assert submit(client, DIGITS_3_5).status_code == 202
