"""String labels and label columns: uploads keep the names, jobs select by them, CSV label columns are found."""

from __future__ import annotations

import numpy as np
import pytest

from tests.factories import assert_names, blobs, npz_bytes, submit, upload


def animals_npz() -> bytes:
    X, y = blobs()
    return npz_bytes(X=X, y=np.where(y == 1, "dog", "cat"))


def test_string_labels_are_numbered_in_sorted_order_and_their_names_kept(client, settings):
    body = upload(client, "animals.npz", animals_npz()).json()
    assert body["classes"] == [0, 1] and body["label_names"] == ["cat", "dog"]
    assert body["class_counts"] == {"0": 6, "1": 6}
    with np.load(settings.data_dir / "datasets" / body["id"] / "data.npz") as stored:
        assert stored["y"].dtype == np.int64 and stored["label_names"].tolist() == ["cat", "dog"]


def test_a_job_selects_by_label_name_and_its_spec_holds_the_numbers(client):
    dataset = upload(client, "animals.npz", animals_npz()).json()["id"]
    response = submit(client, dataset=dataset, primary={"labels": ["dog", "cat"]}, auxiliary=None)
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["primary"]["labels"] == [1, 0]


def test_an_unknown_label_name_is_named_with_the_allowed_ones(client):
    dataset = upload(client, "animals.npz", animals_npz()).json()["id"]
    response = submit(client, dataset=dataset, primary={"labels": ["cow"]}, auxiliary=None)
    assert_names(response, 422, "cow", "cat", "dog")
    assert_names(submit(client, primary={"labels": ["three"]}), 422, "three", "integer labels")


@pytest.mark.parametrize("column", ["label", "Class", "target", "y"])
def test_a_csv_label_column_is_found_by_its_name_and_reported(client, column):
    body = upload(client, "t.csv", f"a,b,{column}\n1,2,0\n3,4,1\n5,6,1\n".encode()).json()
    assert (body["shape"], body["classes"], body["label_column"]) == ([2], [0, 1], column)
    assert column in body["notes"][0] and "label_column" in body["notes"][0]


def test_a_csv_without_a_label_like_column_keeps_every_column_as_a_feature(client):
    body = upload(client, "t.csv", b"a,b,c\n1,2,0\n3,4,1\n").json()
    assert (body["shape"], body["has_labels"], body["notes"]) == ([3], False, None)


def test_a_csv_with_string_labels_in_the_named_column(client):
    body = upload(client, "t.csv", b"kind,a,b\nsetosa,1,2\nvirginica,3,4\nsetosa,5,6\n", label_column="kind").json()
    assert (body["shape"], body["classes"], body["label_names"]) == ([2], [0, 1], ["setosa", "virginica"])
    assert body["class_counts"] == {"0": 2, "1": 1} and body["notes"] is None


def test_a_csv_label_that_is_a_fraction_or_empty_is_refused_with_its_row(client):
    assert_names(upload(client, "t.csv", b"a,label\n1,0\n2,0.5\n"), 422, "row 3", "label")
    assert_names(upload(client, "t.csv", b"a,label\n1,cat\n2,\n"), 422, "row 3", "empty")
