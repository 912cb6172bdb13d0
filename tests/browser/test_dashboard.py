"""The dashboard in a real browser (headless Chromium), against `lelastic up` subprocesses.

A person's path through it: submit a job from the form, watch it run without reloading, read the
metrics and plots, click an example to see its neighbours; follow, cancel and purge jobs in the table;
upload, preview and delete a dataset; read the API docs offline; with API keys, give a key and see only
that tenant's jobs. Any console error, page error or request that leaves the stack fails a test.
"""

from __future__ import annotations

import base64
import json
import re

import httpx
import numpy as np
import pytest
from playwright.sync_api import expect

from tests.factories import long_spec, npz_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DIGITS_PRESET = "Digits 3 vs 5 (aux 8, 9), ReLU net"
JOB_TIMEOUT_MS = 240_000


def images_npz(n: int = 40, side: int = 4) -> bytes:
    """n labelled side×side 'images' of two classes (bright left half or bright right half)."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % 2
    X = rng.uniform(0, 0.3, size=(n, side, side)).astype(np.float32)
    for i, label in enumerate(y):
        X[i, :, (side // 2) * label : (side // 2) * (label + 1)] += 1.0
    return npz_bytes(X=X, y=y)


def wait_succeeded(url: str, job_id: str, headers: dict[str, str] | None = None) -> None:
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=120) as response:
            for _ in response.iter_lines():
                pass
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_a_job_from_the_form_runs_live_and_shows_its_results(open_stack, page_for, shot):
    page = page_for(open_stack.url)
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/ui/"))
    expect(page.locator("#jobs-table")).to_be_visible()
    shot(page, "jobs-empty")

    page.get_by_role("link", name="New job", exact=True).first.click()
    expect(page.locator("#job-form")).to_be_visible()
    schema = httpx.get(open_stack.url + "/openapi.json").json()["components"]["schemas"]
    width = page.locator("fieldset[data-field=model] input[name=width]")
    assert width.get_attribute("max") == str(int(schema["MLPModel"]["properties"]["width"]["maximum"]))
    assert width.input_value() == str(schema["MLPModel"]["properties"]["width"]["default"])

    page.get_by_role("button", name=DIGITS_PRESET).click()
    expect(page.locator("input[name=primary-class][value='3']")).to_be_checked()
    width.fill("128")
    page.locator("fieldset[data-field=weights] input[name=epochs]").fill("20")
    spec = json.loads(page.locator("#spec-json").text_content())
    assert spec["model"]["width"] == 128 and spec["weights"]["epochs"] == 20
    assert spec["primary"] == {"labels": [3, 5]} and spec["auxiliary"] == {"labels": [8, 9]}
    assert "curl" in page.locator("#spec-curl").text_content()
    shot(page, "new-job", full_page=True)

    page.evaluate("window.notReloaded = true")
    page.locator("#submit-job").click()
    expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]+"))
    job_id = page.url.rsplit("/", 1)[-1]
    expect(page.locator("#job-progress")).to_be_attached()
    page.evaluate(
        """() => { window.seen = []; const bar = document.getElementById('job-progress');
        new MutationObserver(() => window.seen.push(Number(bar.getAttribute('aria-valuenow'))))
          .observe(bar, {attributes: true}); }"""
    )
    expect(page.locator("#job-progress")).to_have_attribute("aria-valuenow", "100", timeout=JOB_TIMEOUT_MS)
    assert page.evaluate("window.notReloaded") is True, "the page reloaded"
    assert page.evaluate("window.seen.length") >= 1, "the bar never moved"
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#spec-words")).to_contain_text("classes 3, 5")

    metrics = page.locator("#metrics-table tbody tr")
    expect(metrics).to_have_count(4)
    expect(metrics.first).to_contain_text("LE clustering")
    expect(page.locator("#embedding-plot .point")).to_have_count(365)
    expect(page.locator("canvas.heatmap")).to_have_attribute("width", "365")
    page.locator("#embedding-plot .point").last.hover()
    expect(page.locator("#tooltip")).to_contain_text("dataset row")
    page.locator("#gallery button").nth(3).click()
    expect(page.locator("#similar figure")).to_have_count(10)
    expect(page.locator("#nearest figure")).to_have_count(10)
    expect(page.locator("#neighbours-caption")).to_contain_text("by similarity")
    expect(page.locator("#artifacts a", has_text="similarity.npy")).to_be_visible()
    with page.expect_download() as download:
        page.locator("#artifacts a", has_text="labels.npy").click()
    assert download.value.suggested_filename == "labels.npy"
    shot(page, "job", full_page=True)

    page.get_by_role("link", name="Jobs", exact=True).click()
    row = page.locator(f"tr[data-job='{job_id}']")
    expect(row).to_contain_text("succeeded")
    expect(row.locator("td.num")).to_have_text(re.compile(r"0\.\d{3} \(0\.\d{3}\)"))


def test_the_table_follows_jobs_live_cancels_and_purges(open_stack, page_for, shot):
    torus = {
        "dataset": {"builtin": "torus", "n": 120, "seed": 0},
        "primary": {"labels": [1]},
        "auxiliary": {"labels": [0]},
        "model": {"arch": "mlp", "width": 256, "depth": 2, "activation": "relu"},
        "weights": {"source": "trained", "epochs": 100, "lr": 0.001, "batch_size": 120},
        "similarity": {"kind": "relative", "step": 0, "symmetrize": False},
        "clustering": None,
        "baselines": [],
    }
    with httpx.Client(base_url=open_stack.url, timeout=10) as client:
        job_id = client.post("/v1/jobs", json=torus).json()["id"]
        page = page_for(open_stack.url)
        page.goto("/ui/#/jobs")
        row = page.locator(f"tr[data-job='{job_id}']")
        expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100", timeout=JOB_TIMEOUT_MS)
        expect(row.locator(".status")).to_have_text("succeeded")

        page.locator(f"tr[data-job='{job_id}'] a", has_text="open").click()
        expect(page.locator("#analysis-table")).to_contain_text("Spearman")
        pearson = float(page.locator("#analysis-table tr", has_text="Pearson").locator("td").text_content())
        assert -1 <= pearson <= 1
        expect(page.locator("#elasticity img")).to_be_visible()
        expect(page.locator("#neighbours")).to_have_count(0)  # d = 3 is no image
        shot(page, "job-torus", full_page=True)

        long_id = client.post("/v1/jobs", json=long_spec()).json()["id"]
        page.get_by_role("link", name="Jobs", exact=True).click()
        page.reload()
        long_row = page.locator(f"tr[data-job='{long_id}']")
        expect(long_row.locator(".status")).to_have_text(re.compile("queued|running"))
        shot(page, "jobs")
        long_row.get_by_role("button", name="Cancel").click()
        expect(long_row.locator(".status")).to_have_text("canceled", timeout=30_000)
        long_row.get_by_role("button", name="Purge").click()
        expect(long_row).to_have_count(0)
        assert client.get(f"/v1/jobs/{long_id}").status_code == 404

        page.get_by_label("Filter by status").select_option("succeeded")
        expect(page).to_have_url(re.compile(r"status=succeeded"))
        statuses = page.locator("#jobs-table .status")
        expect(statuses.first).to_have_text("succeeded")
        assert set(statuses.all_text_contents()) == {"succeeded"}


def test_datasets_upload_by_drop_preview_and_delete(open_stack, page_for, shot):
    page = page_for(open_stack.url)
    page.goto("/ui/#/datasets")
    expect(page.locator("#datasets-table")).to_be_visible()
    payload = base64.b64encode(images_npz()).decode()
    page.evaluate(
        """(payload) => {
          const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], 'halves.npz'));
          document.querySelector('.drop').dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true}));
        }""",
        payload,
    )
    row = page.locator("#datasets-table tr", has_text="halves.npz")
    expect(row).to_contain_text("0: 20, 1: 20")
    row.get_by_role("button", name="Preview").click()
    expect(page.locator("#dataset-preview figure")).to_have_count(40)
    shot(page, "datasets", full_page=True)
    row.get_by_role("button", name="Delete").click()
    expect(page.locator("#datasets-table tr", has_text="halves.npz")).to_have_count(0)


def test_narrow_window_and_keyboard(open_stack, page_for, shot):
    jobs = httpx.get(open_stack.url + "/v1/jobs", params={"status": "succeeded"}).json()["data"]
    digits = next(job for job in jobs if job["spec"]["dataset"]["builtin"] == "digits")
    page = page_for(open_stack.url, width=390, height=844)
    page.goto(f"/ui/#/jobs/{digits['id']}")
    expect(page.locator("#metrics-table")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), "page scrolls sideways"
    shot(page, "job-narrow")

    page.locator("#gallery button").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#similar figure")).to_have_count(10)
    page.locator(".brand").focus()
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "New job":
            break
    page.keyboard.press("Enter")
    expect(page.locator("#job-form")).to_be_visible()


def test_api_docs_load_offline(open_stack, page_for, shot):
    page = page_for(open_stack.url)
    page.goto("/docs")
    expect(page.locator(".opblock").first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/v1/jobs").first).to_be_visible()
    shot(page, "docs")
    page.goto("/redoc")
    expect(page.get_by_role("heading", name=re.compile("lelastic"))).to_be_visible()
    expect(page.get_by_role("menuitem", name="jobs")).to_be_visible()


def test_with_keys_the_page_asks_for_one_and_shows_only_that_tenants_jobs(keyed_stack, page_for, shot):
    stack, keys = keyed_stack
    spec = {
        "dataset": {"builtin": "two_cycles", "n": 40},
        "model": {"arch": "mlp", "width": 8},
        "weights": {"source": "init"},
    }
    ids = {}
    for tenant, key in keys.items():
        response = httpx.post(stack.url + "/v1/jobs", json=spec, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 202, response.text
        ids[tenant] = response.json()["id"]

    page = page_for(stack.url)
    page.goto("/")
    expect(page.locator("#key-form")).to_be_visible()
    shot(page, "key")
    page.locator("#key-input").fill(keys["alice"])
    page.locator("#key-input").press("Enter")
    expect(page.locator(f"tr[data-job='{ids['alice']}']")).to_be_visible()
    expect(page.locator(f"tr[data-job='{ids['bob']}']")).to_have_count(0)
    expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
    assert page.evaluate("sessionStorage.getItem('lelastic.apiKey')") == keys["alice"]
    assert page.context.cookies() == []
    wait_succeeded(stack.url, ids["alice"], {"Authorization": f"Bearer {keys['alice']}"})
    page.goto(f"/ui/#/jobs/{ids['alice']}")
    expect(page.locator("#embedding-plot .point")).to_have_count(40)
    page.get_by_role("button", name="Forget key").click()
    expect(page.locator("#key-form")).to_be_visible()
