"""The dashboard's and the docs' pages, and the dataset rows route the dashboard reads thumbnails from."""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest

from service.api import auth
from tests.factories import app_client, npy_bytes, npz_bytes, safetensors_bytes, upload

ASSET = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


def referenced_assets(html: str) -> list[str]:
    """Every script, stylesheet and icon URL a page names (links to other pages and data: URLs left out)."""
    return [url for url in ASSET.findall(html) if not url.startswith(("data:", "#")) and "." in url.rsplit("/", 1)[-1]]


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/ui/"])
def test_every_asset_a_page_references_is_served_by_the_app(client, path):
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = referenced_assets(page.text)
    assert assets, f"{path} references no assets"
    for url in assets:
        assert url.startswith("/"), f"{path} loads {url} from elsewhere"
        response = client.get(url)
        assert response.status_code == 200, url
        assert len(response.content) > 100, url
    if path != "/ui/":
        assert "cdn" not in page.text.lower() and "fonts.googleapis" not in page.text


def test_docs_pages_name_the_openapi_document(client):
    assert "/openapi.json" in client.get("/docs").text
    assert "/openapi.json" in client.get("/redoc").text


def test_the_root_redirects_to_the_dashboard(client):
    for path in ("/", "/ui"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 307 and response.headers["location"] == "/ui/"
    assert "lelastic dashboard" in client.get("/", follow_redirects=True).text


def test_dashboard_config_says_whether_a_key_is_needed(client, settings, tmp_path):
    assert client.get("/ui/config.json").json() == {"auth": False}
    keys_file = tmp_path / "keys"
    auth.create_key(keys_file, "alice")
    with app_client(settings, api_keys_file=keys_file) as keyed_client:
        assert keyed_client.get("/ui/config.json").json() == {"auth": True}
        assert keyed_client.get("/ui/").status_code == 200  # the page itself is public: it asks for the key


def test_vendored_licences_ship_with_the_files(client):
    for url in (
        "/ui/static/vendor/swagger-ui/LICENSE",
        "/ui/static/vendor/redoc/LICENSE",
        "/ui/static/vendor/VENDOR.md",
    ):
        assert client.get(url).status_code == 200, url
    vendor = client.get("/ui/static/vendor/VENDOR.md").text
    assert "5.35.0" in vendor and "2.5.4" in vendor


def test_rows_of_an_uploaded_dataset_page_through_it(client):
    X = np.arange(30 * 16, dtype=np.float32).reshape(30, 4, 4)
    y = np.arange(30) % 3
    dataset_id = upload(client, "images.npz", npz_bytes(X=X, y=y)).json()["id"]
    rows = client.get(f"/v1/datasets/{dataset_id}/rows", params={"offset": 25, "limit": 10})
    assert rows.status_code == 200, rows.text
    body = rows.json()
    assert body["offset"] == 25 and body["n"] == 30 and body["shape"] == [4, 4]
    assert body["X"] == X[25:].reshape(5, 16).tolist() and body["y"] == y[25:].tolist()
    assert client.get(f"/v1/datasets/{dataset_id}/rows", params={"limit": 101}).status_code == 422
    past_the_end = client.get(f"/v1/datasets/{dataset_id}/rows", params={"offset": 30}).json()
    assert past_the_end["X"] == [] and past_the_end["y"] == []


def test_a_page_of_rows_reads_only_those_rows(client):
    X = np.arange(4000 * 1000, dtype=np.float32).reshape(4000, 1000)  # 16 MB
    dataset_id = upload(client, "big.npz", npz_bytes(X=X, y=np.arange(4000) % 2)).json()["id"]
    tracemalloc.start()
    try:
        rows = client.get(f"/v1/datasets/{dataset_id}/rows", params={"offset": 3990, "limit": 20})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows.status_code == 200, rows.text
    assert rows.json()["X"] == X[3990:].tolist() and rows.json()["y"] == [0, 1] * 5
    assert peak < X.nbytes / 2, f"a page of 10 rows peaked at {peak} bytes"
    fortran = np.asfortranarray(np.arange(60, dtype=np.float32).reshape(20, 3))
    dataset_id = upload(client, "f.npy", npy_bytes(fortran)).json()["id"]
    assert client.get(f"/v1/datasets/{dataset_id}/rows", params={"offset": 18}).json()["X"] == fortran[18:].tolist()


def test_rows_without_labels_and_of_weights(client):
    dataset_id = upload(client, "x.npz", npz_bytes(X=np.ones((5, 3), dtype=np.float32))).json()["id"]
    assert client.get(f"/v1/datasets/{dataset_id}/rows").json()["y"] is None
    assert client.get(f"/v1/datasets/{'0' * 32}/rows").status_code == 404
    weights_id = upload(client, "w.safetensors", safetensors_bytes({"w": ("F32", [2, 2])})).json()["id"]
    assert client.get(f"/v1/datasets/{weights_id}/rows").status_code == 409


def test_rows_are_tenant_checked(keyed):
    client, alice, bob, _ = keyed
    as_alice, as_bob = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
    dataset_id = upload(client, "d.npz", npz_bytes(X=np.ones((6, 2), dtype=np.float32)), headers=as_alice).json()["id"]
    assert client.get(f"/v1/datasets/{dataset_id}/rows", headers=as_alice).status_code == 200
    assert client.get(f"/v1/datasets/{dataset_id}/rows", headers=as_bob).status_code == 404
    assert client.get(f"/v1/datasets/{dataset_id}/rows").status_code == 401
