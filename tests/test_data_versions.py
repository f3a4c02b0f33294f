"""Dataset versions as stored (mnist_pipeline/data_versions.py): read back only whole and as
recorded, with bounded reads; chosen up to a number; audited by `verify`."""

from __future__ import annotations

import io
import json

import numpy as np
from numpy.lib import format as npy_format
import pytest

from mnist_pipeline import audit, data_versions, keys
from mnist_pipeline.data_versions import RECORD
from mnist_pipeline.errors import DatasetError, PreconditionFailed

pytestmark = pytest.mark.unit  # a folder store, no server, no training: `make test-unit`


def records(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.zeros(n, RECORD)
    rows["label"], rows["image"] = np.arange(n) % 10, rng.integers(0, 256, (n, 28, 28))
    rows["holdout"] = (np.arange(n) // 10) % 3 == 0  # one image of each digit in three
    return rows


def publish(store, n: int, version: int, seed: int = 0):
    return data_versions.publish(store, records(n, seed), version, created_at="2026-12-04T00:00:00+00:00",
                                 created_by="test@here", source="/data", note="", holdout_fraction=0.2, seed=42)


def test_the_images_file_round_trips_and_a_lying_header_is_refused_before_any_allocation():
    data = data_versions.encode(records(30))
    assert (data_versions.decode(data, "k", 30) == records(30)).all()
    with pytest.raises(DatasetError, match="not the 29 images its version's manifest records"):
        data_versions.decode(data, "k", 29)
    header = io.BytesIO()  # 2.4 TB announced, 23 KB there: refused on the header
    npy_format.write_array_header_1_0(header, {"descr": npy_format.dtype_to_descr(RECORD), "fortran_order": False,
                                               "shape": (3_000_000_000,)})
    with pytest.raises(DatasetError, match="not the 30 images"):
        data_versions.decode(header.getvalue() + data[128:], "k", 30)
    with pytest.raises(DatasetError, match="truncated or damaged"):
        data_versions.decode(data[:-786], "k", 30)
    with pytest.raises(DatasetError, match="not a NumPy array file"):
        data_versions.decode(b"PK\x03\x04 a zip", "k", 30)


def test_a_version_reads_back_as_published_and_its_number_is_taken_once(local_store):
    manifest = publish(local_store, 30, 1)
    assert manifest.counts.train == [2] * 10 and manifest.counts.holdout == [1] * 10
    assert (data_versions.load(local_store, manifest) == records(30)).all()
    with pytest.raises(PreconditionFailed):
        publish(local_store, 20, 1, seed=1)  # another ingest's images cannot become version 1
    assert [v.total for v in data_versions.list_versions(local_store)] == [30]


def test_select_takes_versions_up_to_n_and_refuses_one_that_does_not_exist(local_store):
    for n in (1, 2, 3):
        publish(local_store, 10 * n, n, seed=n)
    assert [v.version for v in data_versions.select(local_store, None)] == [1, 2, 3]
    assert [v.version for v in data_versions.select(local_store, 2)] == [1, 2]
    assert data_versions.select(local_store, 0) == []
    with pytest.raises(DatasetError, match=r"data_version 4: the store .* has versions 1-3; `mnist-pipeline data`"):
        data_versions.select(local_store, 4)


def test_swapped_images_are_never_used_and_verify_names_every_damage(local_store):
    first, second = publish(local_store, 30, 1), publish(local_store, 20, 2, seed=2)
    local_store.put(first.images.key, data_versions.encode(records(30, seed=9)))  # same shape, other pixels
    with pytest.raises(DatasetError, match=r"data version 1\) has SHA-256 .* but its manifest records"):
        data_versions.load(local_store, first)
    edited = json.loads(local_store.get(keys.data_version(2)))
    edited["counts"]["train"][0] += 1
    local_store.put(keys.data_version(2), json.dumps(edited).encode())
    local_store.put(keys.INGESTED + "stray.txt", b"x")
    problems = audit.verify(local_store).problems
    assert any(p.startswith(first.images.key) and "has SHA-256" in p for p in problems)
    assert any(f"(data version 2) is {second.images.bytes:,} bytes" in p or "not the 21 images" in p for p in problems)
    assert f"{keys.INGESTED}stray.txt: a foreign object (not a dataset version's manifest or images)" in problems
    assert len(problems) == 3, problems
