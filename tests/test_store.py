"""The store on every backend (a folder, moto and Ceph's radosgw over HTTP), and its failures for
real: a dead and a hung endpoint on 127.0.0.1, a read-only bind mount, a 2 MB tmpfs that fills."""

import logging
import os
import stat
import threading
import time
import urllib.request

import boto3
import pytest

from mnist_pipeline import store as store_module
from mnist_pipeline.errors import (NotFoundInStore, PreconditionFailed, StoreError, StoreUnavailable,
                                   is_transient)
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import STALE_TEMP_S, LocalStore, open_store
from tests.conftest import free_port
from tests.faults import CuttableProxy, SilentEndpoint

S3_SERVERS = pytest.mark.parametrize("store", ["s3", "radosgw"], indirect=True)  # moto, radosgw
KEY = "registry/production.json"


def raw_client():
    """boto3 on the test's S3 server, beside the store (its settings are in the environment)."""
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture
def new_process(monkeypatch):
    """No S3 endpoint's If-Match form known yet, as in a process that just started."""
    monkeypatch.setattr(store_module, "_if_match_form", {})


def if_match_sent(store) -> list[str]:
    """The If-Match header of every conditional PUT the store sends from now on."""
    sent = []

    def record(request, **_):
        if "If-Match" in request.headers:
            sent.append(request.headers["If-Match"].decode())
    store._client.meta.events.register("before-send.s3.PutObject", record)
    return sent


def test_put_get_list_exists_delete(store):
    etag = store.put("runs/a/metrics.json", b'{"x": 1}')
    store.put("runs/a/plots/p.png", b"png")
    store.put("runs/b/metrics.json", b"{}")
    assert store.get_with_etag("runs/a/metrics.json") == (b'{"x": 1}', etag)
    assert store.list("runs/a/") == ["runs/a/metrics.json", "runs/a/plots/p.png"]
    assert [(o.key, o.size) for o in store.list_objects("runs/a/m")] == [("runs/a/metrics.json", 8)]
    assert store.exists("runs/b/metrics.json") and not store.exists("runs/c/metrics.json")
    with pytest.raises(NotFoundInStore):
        store.get("runs/c/metrics.json")
    store.delete("runs/b/metrics.json")
    store.delete("runs/b/metrics.json")  # absent is fine
    assert not store.exists("runs/b/metrics.json")


def test_children_are_one_listing_of_folders(store):
    for run in ("run-1", "run-2", "other"):
        store.put(f"runs/{run}/manifest.json", b"{}")
        store.put(f"runs/{run}/plots/a.png", b"png")
    assert store.list_children("runs/") == ["other", "run-1", "run-2"]
    assert store.list_children("runs/run-") == ["run-1", "run-2"]
    assert store.list_children("nothing/") == []


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


def test_racing_conditional_writes_let_exactly_one_through(store, new_process):
    """Four writers that read the same ETag write at once: one wins, the three others are told so
    (PreconditionFailed). The same for four creators of one key. In a new process, so on radosgw
    every writer also goes through the detection of the ETag's form."""
    def race(write) -> int:
        barrier, won, refused = threading.Barrier(4), [], []

        def writer(i):
            barrier.wait(10)
            try:
                write(i)
                won.append(i)
            except PreconditionFailed:
                refused.append(i)
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        [t.start() for t in threads]
        [t.join(60) for t in threads]
        assert len(won) == 1 and len(refused) == 3, (won, refused)
        return won[0]

    etag = store.put_if_absent(KEY, b"v0")
    winner = race(lambda i: store.put_if_match(KEY, f"replaced by {i}".encode(), etag))
    assert store.get(KEY) == f"replaced by {winner}".encode()
    winner = race(lambda i: store.put_if_absent("registry/new.json", f"created by {i}".encode()))
    assert store.get("registry/new.json") == f"created by {winner}".encode()


@S3_SERVERS
@pytest.mark.parametrize("form_known", [False, True], ids=["form-unknown", "form-known"])
def test_the_etag_form_detection_never_lets_a_stale_etag_through(store, new_process, form_known):
    """The write is sent again in the other form only while the object still has the ETag sent:
    an object that changed meanwhile refuses the writer at once, whether its endpoint's form is
    known yet or not."""
    stale = store.put_if_absent(KEY, b"v1")
    current = store.put_if_match(KEY, b"v2", stale) if form_known else store.put(KEY, b"v2")
    sent = if_match_sent(store)
    with pytest.raises(PreconditionFailed):
        store.put_if_match(KEY, b"v3", stale)
    assert store.get_with_etag(KEY) == (b"v2", current)
    assert len(sent) == 1  # refused, and not sent again in the other form


@pytest.mark.parametrize("store,first,then", [
    ("s3", ['"{}"'], ['"{}"']),            # moto takes RFC 9110's quoted ETag (as AWS and MinIO do)
    ("radosgw", ['"{}"', "{}"], ["{}"]),  # radosgw refuses it, takes it bare
], indirect=["store"])
def test_each_server_is_sent_the_etag_form_it_takes_learned_once_per_endpoint(store, new_process, first, then):
    v1 = store.put_if_absent(KEY, b"v1")
    sent = if_match_sent(store)
    v2 = store.put_if_match(KEY, b"v2", v1)
    assert sent == [form.format(v1) for form in first]
    again = open_store(load_settings())  # another store on the same endpoint, in this process
    sent = if_match_sent(again)
    again.put_if_match(KEY, b"v3", v2)
    assert sent == [form.format(v2) for form in then]
    assert store.get(KEY) == b"v3"


def test_a_server_that_refuses_its_own_etag_in_both_forms_is_an_error_not_a_lost_race(s3_store, new_process):
    """A server that cannot make conditional writes at all (simulated: moto, with every If-Match
    header spoiled on the way) is a StoreError that says so, never "production kept changing"."""
    etag = s3_store.put_if_absent(KEY, b"v1")

    def spoil(request, **_):
        if "If-Match" in request.headers:
            request.headers["If-Match"] += b"0"
    s3_store._client.meta.events.register("before-send.s3.PutObject", spoil)
    with pytest.raises(StoreError) as err:
        s3_store.put_if_match(KEY, b"v2", etag)
    assert str(err.value) == (f"replace {KEY}: the S3 server refuses If-Match with the object's own ETag, "
                              "quoted or bare, so it cannot make conditional writes; use AWS S3, MinIO or "
                              "Ceph radosgw")
    assert s3_store.get(KEY) == b"v1"


def test_invalid_keys_are_refused(store):
    for key in ("", "/abs", "runs/../../etc"):
        with pytest.raises(ValueError):
            store.put(key, b"x")


def test_the_write_probe_leaves_nothing(store):
    store.probe_writable()
    assert store.list("") == []


@S3_SERVERS
def test_s3_bucket_is_created_and_prefix_respected(store, monkeypatch):
    bucket = f"new-{os.urandom(6).hex()}"
    monkeypatch.setenv("MNIST_STORE_URL", f"s3://{bucket}/team/a")
    st = open_store(load_settings())
    st.put("runs/r/metrics.json", b"{}")
    keys = [o["Key"] for o in raw_client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["team/a/runs/r/metrics.json"]
    assert st.list("runs/") == ["runs/r/metrics.json"] and st.list_children("runs/") == ["r"]
    assert st.link("runs/r/metrics.json", 60).startswith(os.environ["AWS_ENDPOINT_URL_S3"])


@S3_SERVERS
def test_s3_console_folder_markers_are_not_objects(store):
    raw_client().put_object(Bucket=store.bucket, Key="runs/zzz/", Body=b"")
    assert store.list("runs/") == [] and store.list_children("runs/") == ["zzz"]


@S3_SERVERS
def test_links_open_in_a_browser_and_are_signed_for_the_public_endpoint(store, monkeypatch):
    """A presigned link is a plain GET; MNIST_S3_PUBLIC_URL signs it for the endpoint as a browser
    reaches it (compose: http://localhost:9000)."""
    store.put("runs/r/report.html", b"<html>hi</html>")
    assert urllib.request.urlopen(store.link("runs/r/report.html", 600), timeout=5).read() == b"<html>hi</html>"
    public = os.environ["AWS_ENDPOINT_URL_S3"].replace("127.0.0.1", "localhost")
    monkeypatch.setenv("MNIST_S3_PUBLIC_URL", public)
    url = open_store(load_settings()).link("runs/r/report.html", 600)
    assert url.startswith(public + "/") and "X-Amz-Signature=" in url
    assert urllib.request.urlopen(url, timeout=5).read() == b"<html>hi</html>"


def test_a_folder_store_has_no_web_link_but_a_location(local_store):
    local_store.put("runs/r/report.html", b"x")
    assert local_store.link("runs/r/report.html") is None
    assert local_store.location("runs/r/report.html") == str(local_store.root / "runs/r/report.html")


# -- failures ---------------------------------------------------------------------------------------
def test_a_dead_endpoint_is_a_transient_error_within_the_deadline(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MNIST_DEADLINE_S", "4")
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as err:
        open_store(load_settings())
    assert time.monotonic() - t0 < 4 + 2
    assert "AWS_ENDPOINT_URL_S3" in str(err.value) and "testing-secret" not in str(err.value)
    assert is_transient(err.value)


def test_a_refused_connection_counts_its_attempts_truly(s3_env, monkeypatch, caplog):
    """AWS_MAX_ATTEMPTS counts every attempt, the first included: before, "attempt 5/4"."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    for attempts in ("4", "2"):
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", attempts)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mnist_pipeline.store"), pytest.raises(StoreUnavailable):
            open_store(load_settings())
        assert [r.getMessage() for r in caplog.records] == [
            f"S3 endpoint not answering (EndpointConnectionError), attempt {n}/{attempts}: HeadBucket"
            for n in range(2, int(attempts) + 1)]


def test_a_hung_endpoint_warns_on_each_retry_and_gives_up_at_the_deadline(s3_env, monkeypatch, caplog):
    silent = SilentEndpoint()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", silent.endpoint)
    monkeypatch.setenv("MNIST_DEADLINE_S", "4")  # 1 s per attempt, 4 attempts
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="mnist_pipeline.store"), pytest.raises(StoreUnavailable) as err:
        open_store(load_settings())
    elapsed = time.monotonic() - t0
    silent.close()
    print(f"FAIL-FAST hung S3 endpoint, deadline 4 s: gave up after {elapsed:.1f} s")
    assert 3 < elapsed < 4 + 1 + 1, elapsed  # the deadline, plus at most one attempt's timeout
    assert "did not answer within 4 s" in str(err.value)
    retries = [r.getMessage() for r in caplog.records]
    assert retries and retries[0].startswith("S3 endpoint not answering (ReadTimeoutError), attempt 2/4")


def test_a_slow_answer_past_the_deadline_is_still_the_answer(s3_env, moto_server, monkeypatch, caplog):
    """The deadline stops new attempts; it never throws away an answer that came. A CI machine
    once took 20 s for one listing and the store reported "did not answer (last: HTTP 200)"."""
    slow = CuttableProxy(moto_server.port, answer_delay_s=0.5)
    slow.restore()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", slow.endpoint)
    monkeypatch.setenv("MNIST_DEADLINE_S", "0.2")  # each answer takes longer; each attempt may take 1 s
    try:
        with caplog.at_level(logging.WARNING, logger="mnist_pipeline.store"):
            store = open_store(load_settings())
            store.put(KEY, b"{}")
            assert store.get(KEY) == b"{}" and store.list_objects()[0].key == KEY
            with pytest.raises(NotFoundInStore):  # a late 404 is a 404, not an outage
                store.get("registry/absent.json")
    finally:
        slow.cut()
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # not one retry


def test_a_read_only_folder_is_found_by_the_probe_in_one_line(tmp_path, make_readonly):
    folder = make_readonly(tmp_path / "store")
    with pytest.raises(StoreError) as err:
        LocalStore(folder).probe_writable()
    assert str(err.value) == (f"cannot write a test file in the store {folder}: Read-only file system; "
                              "set MNIST_STORE_URL to a writable folder")
    assert not is_transient(err.value)


def test_read_only_folder_store_can_still_be_read(tmp_path, make_readonly):
    LocalStore(tmp_path / "store").put("runs/r/metrics.json", b"{}")
    store = LocalStore(make_readonly(tmp_path / "store"))
    assert store.get("runs/r/metrics.json") == b"{}"
    with pytest.raises(StoreError, match="Read-only file system"):
        store.put("runs/r/other.json", b"{}")


def test_a_full_disk_is_permanent_and_leaves_no_temporary_file(small_tmpfs):
    store = LocalStore(small_tmpfs)
    with pytest.raises(StoreError) as err:
        store.put("runs/r/model.keras", os.urandom(3 * 2**20))
    assert "No space left on device" in str(err.value) and "mnist-pipeline gc" in str(err.value)
    assert not is_transient(err.value)
    assert [p.name for p in small_tmpfs.rglob("*") if p.is_file()] == []
    with pytest.raises(StoreError, match=r"has only 2\.0 MB free, a run needs 64 MB"):
        store.probe_writable()


def test_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store = LocalStore(tmp_path / "store")
        store.put("runs/r/report.html", b"x")
        store.put_if_absent("registry/production.json", b"{}")
        os.umask(0o027)
        LocalStore(tmp_path / "store").put("runs/r/plots/a.png", b"x")
    finally:
        os.umask(old)
    mode = lambda key: stat.S_IMODE((tmp_path / "store" / key).stat().st_mode)  # noqa: E731
    assert mode("runs/r/report.html") == 0o644 and mode("registry/production.json") == 0o644
    assert mode("runs/r/plots/a.png") == 0o640


def test_stale_temporary_files_are_found_and_cleaned(local_store):
    local_store.put("runs/r/model.keras", b"x")
    stale = local_store.root / "runs/r/.tmp-dead.part"
    fresh = local_store.root / "runs/r/.tmp-writing.part"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    assert local_store.stale_temp_files() == ["runs/r/.tmp-dead.part"]
    local_store.probe_writable()  # before a run: the store cleans up after writers that died
    assert not stale.exists() and fresh.exists()


def test_a_full_disk_error_crosses_a_process_boundary_whole():
    """Dask and Prefect pickle exceptions: StoreFull's two parts come back, not a TypeError."""
    import pickle

    from mnist_pipeline.errors import StoreFull

    again = pickle.loads(pickle.dumps(StoreFull("cannot write k in the store /s: No space left", "free space")))
    assert (type(again), str(again), again.problem) == (StoreFull, "cannot write k in the store /s: No space left; "
                                                        "free space", "cannot write k in the store /s: No space left")
