import boto3
import pytest

from mnist_pipeline.errors import NotFoundInStore, PreconditionFailed, StoreUnavailable
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import S3Store, open_store


def test_put_get_list_exists(store):
    etag = store.put("runs/a/metrics.json", b'{"x": 1}')
    store.put("runs/a/plots/p.png", b"png")
    store.put("runs/b/metrics.json", b"{}")
    assert store.get_with_etag("runs/a/metrics.json") == (b'{"x": 1}', etag)
    assert store.list("runs/a/") == ["runs/a/metrics.json", "runs/a/plots/p.png"]
    assert store.exists("runs/b/metrics.json") and not store.exists("runs/c/metrics.json")
    with pytest.raises(NotFoundInStore):
        store.get("runs/c/metrics.json")


def test_put_replaces_whole_object(store):
    store.put("k", b"first version, longer")
    store.put("k", b"second")
    assert store.get("k") == b"second"


def test_create_only_refuses_an_existing_key(store):
    store.put_if_absent("registry/production.json", b"one")
    with pytest.raises(PreconditionFailed):
        store.put_if_absent("registry/production.json", b"two")
    assert store.get("registry/production.json") == b"one"


def test_replace_if_unchanged_refuses_a_stale_etag(store):
    stale = store.put_if_absent("registry/production.json", b"v1")
    fresh = store.put_if_match("registry/production.json", b"v2", stale)
    with pytest.raises(PreconditionFailed):
        store.put_if_match("registry/production.json", b"v3", stale)
    assert store.get_with_etag("registry/production.json") == (b"v2", fresh)


def test_replace_if_unchanged_refuses_a_missing_key(store):
    with pytest.raises(PreconditionFailed):
        store.put_if_match("registry/none.json", b"x", "0" * 32)


def test_invalid_keys_are_refused(store):
    for key in ("", "/abs", "runs/../../etc"):
        with pytest.raises(ValueError):
            store.put(key, b"x")


def test_s3_bucket_is_created_and_prefix_respected(s3_env, moto_server, monkeypatch):
    monkeypatch.setenv("MNIST_STORE_URL", s3_env["MNIST_STORE_URL"] + "/team/a")
    st = open_store(load_settings())
    st.put("runs/r/metrics.json", b"{}")
    client = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1")
    bucket = s3_env["MNIST_STORE_URL"][5:]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["team/a/runs/r/metrics.json"]
    assert st.list("runs/") == ["runs/r/metrics.json"]
    assert st.link("runs/r/metrics.json", 60).startswith(moto_server.endpoint)


def test_s3_unreachable_endpoint_is_a_clear_transient_error(s3_env, monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnavailable) as err:
        S3Store(load_settings(), max_attempts=1)
    assert "unreachable" in str(err.value) and "AWS_ENDPOINT_URL_S3" in str(err.value)
    assert "testing-secret" not in str(err.value)


def test_local_store_files_are_never_partial(local_store):
    local_store.put("runs/a/model.keras", b"x" * 100_000)
    leftovers = [p for p in local_store.root.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
