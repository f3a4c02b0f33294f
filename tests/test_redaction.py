"""One redaction for every URL-shaped value (mnist_pipeline/redaction.py): a test per form, then
where it is applied (log records of any logger, our errors, an unforeseen exception, the
notification warning), and end to end: a flow whose notification cannot be delivered to a
token-bearing URL, and a stage or flow body raising a library's error that names a secret URL,
show the secret neither in their output nor in the Prefect server's database."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_pipeline.errors import StoreUnavailable, is_transient, redacted
from mnist_pipeline.redaction import install_log_redaction, redact, redact_url
from tests.conftest import REPO, free_port, prefect_home

SECRET = "tok3n-SECRET"


@pytest.mark.parametrize("url,shown", [
    # user info: a password, an S3 key and secret, one with an unencoded '/'
    (f"json://user:{SECRET}@hooks.example/p", "json://***@hooks.example/p"),
    (f"s3://AKIAKEY:{SECRET}@bucket/prefix", "s3://***@bucket/prefix"),
    (f"s3://AKIAKEY:ab/{SECRET}@bucket", "s3://***@bucket"),
    (f"mailto://me:{SECRET}@gmail.com", "mailto://***@gmail.com"),
    # query values, Apprise's `-` (headers... of the payload) and `+` (HTTP headers) parameters
    (f"json://host:8080/path?-token={SECRET}&+X-Auth={SECRET}", "json://host:8080/path?-token=***&+X-Auth=***"),
    (f"https://api.example/v1?key={SECRET}&verbose", "https://api.example/v1?key=***&***"),
    (f"https://app.example/cb#access_token={SECRET}", "https://app.example/cb#***"),
    # Apprise services whose host and path are the token
    (f"slack://T1JJ3T3L2/A1BRTD4JD/{SECRET}", "slack://***"),
    (f"discord://4174216298/{SECRET}", "discord://***"),
    (f"tgram://123456789:{SECRET}/12315544/", "tgram://***"),
    (f"msteams://group@T/{SECRET}/A/B", "msteams://***"),
    # webhooks on https: known hosts, any host's /hooks/..., Telegram's /bot<id>:<token>/
    (f"https://hooks.slack.com/services/T1/B1/{SECRET}", "https://hooks.slack.com/***"),
    (f"https://discord.com/api/webhooks/4174216298/{SECRET}", "https://discord.com/***"),
    (f"https://chat.example.org/hooks/{SECRET}", "https://chat.example.org/hooks/***"),
    (f"https://proxy.example/bot123:{SECRET}/sendMessage", "https://proxy.example/***/sendMessage"),
])
def test_every_form_of_secret_in_a_url_is_masked(url, shown):
    assert redact_url(url) == shown and SECRET not in shown
    assert redact(f"error: could not reach '{url}'.") == f"error: could not reach '{shown}'."


@pytest.mark.parametrize("url", [
    "s3://bucket/team/a", "http://127.0.0.1:9000", "tcp://10.0.0.5:8786", "http://[::1]:4200/api/health",
    "https://s3.example/bucket/runs/6a39a689-f1a3-4f85-9f67-0aa01d90285e/report.html?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIA%2F20261204%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261204T000000Z"
    "&X-Amz-Expires=604800&X-Amz-SignedHeaders=host&X-Amz-Signature=abcdef",
])
def test_places_and_the_reports_presigned_links_are_kept(url):
    """A presigned link is the project's own capability, made to be opened: masking it would break
    every report link the run prints and sends."""
    assert redact_url(url) == url and redact(f"report: {url}") == f"report: {url}"


@pytest.mark.unit
@pytest.mark.parametrize("text,shown", [
    # a path's normalisation collapsed the `//` (Path("https://u:p@h/x") is "https:/u:p@h/x")
    (f"error: https:/u:{SECRET}@host/x.png: no such file", "error: https:/***@host/x.png: no such file"),
    (f"error: s3:/KEY:{SECRET}@bucket/x: no such file", "error: s3:/***@bucket/x: no such file"),
    (f"error: no store at /home/me/s3:/AKID:{SECRET}@bkt: no such folder",
     "error: no store at /home/me/s3:/***@bkt: no such folder"),
    (f"s3:/AKID:ab/{SECRET}@bkt/x", "s3:/***@bkt/x"),
    (f"https:/host/x.png?token={SECRET}#{SECRET}", "https:/host/x.png?token=***#***"),
    # user info after any scheme-like word, with any slashes or none
    (f"minio:/u:{SECRET}@host:9000", "minio:/***@host:9000"),
    (f"s3:KEY:{SECRET}@bucket", "s3:***@bucket"),
    (f"error:https:/u:{SECRET}@h/x", "error:https:/***@h/x"),
    # an '@' percent-encoded still ends the user info: no bucket or host name holds a '%40'
    (f"s3://AKID:{SECRET}%40mybucket/prefix", "s3://***@mybucket/prefix"),
    (f"s3:/AKID:{SECRET}%40mybucket", "s3:/***@mybucket"),
])
def test_user_info_is_masked_where_a_paths_normalisation_or_encoding_hid_the_url(text, shown):
    """Found by an audit: `predict 'https://u:PASS@host/x.png'` printed the password in its error."""
    assert redact(text) == shown and redact(shown) == shown


@pytest.mark.unit
@pytest.mark.parametrize("text", [
    "/data/a , http://x.example/mnist/", "C:/Users/me@corp/x.png", "mailto:me@example.org", "by alice@box",
    "actor:root@host", "python:3.11-slim@sha256:0123abcd", "git@github.com:org/repo.git", "file:/tmp/x.png",
    "https://cdn.example/npm/pkg@1.2.3/file.js", "at 10:30 bob@example.org wrote", "runs/run-a/report.html",
])
def test_paths_addresses_and_image_references_are_left_alone(text):
    assert redact(text) == text


def test_a_list_of_urls_is_redacted_url_by_url_and_redaction_is_idempotent():
    text = f"MNIST_NOTIFY_URL=json://h/p,discord://1/{SECRET},mailto://u:{SECRET}@x.org"
    once = redact(text)
    assert once == "MNIST_NOTIFY_URL=json://h/p,discord://***,mailto://***@x.org" and redact(once) == once


@pytest.fixture
def log_redaction():
    previous = logging.getLogRecordFactory()
    install_log_redaction()
    yield
    logging.setLogRecordFactory(previous)


def test_every_log_record_is_redacted_whatever_its_logger_arguments_or_traceback(log_redaction, caplog):
    log = logging.getLogger("some.library")
    with caplog.at_level(logging.INFO, logger="some.library"):
        log.info("sending to %s", f"json://h/p?-token={SECRET}")
        try:
            raise ConnectionError(f"cannot reach https://hooks.slack.com/services/T/B/{SECRET}")
        except ConnectionError:
            log.exception("delivery failed")
    assert SECRET not in caplog.text and "json://h/p?-token=***" in caplog.text
    assert "Traceback" in caplog.text and "https://hooks.slack.com/***" in caplog.text


def test_our_errors_are_redacted_where_they_are_made():
    """Their messages reach task and flow states, the one-line errors and the UI."""
    exc = StoreUnavailable(f"cannot reach http://admin:{SECRET}@minio:9000")
    assert str(exc) == "cannot reach http://***@minio:9000"


@pytest.mark.unit
@pytest.mark.parametrize("raised,shown", [
    (ValueError(f"cannot read s3://AKIAKEY:{SECRET}@bucket/x"), "cannot read s3://***@bucket/x"),
    (OSError(2, "No such file or directory", f"https://u:{SECRET}@mirror/x.gz"),
     "[Errno 2] No such file or directory: 'https://***@mirror/x.gz'"),
    (KeyError(f"json://h/p?-token={SECRET}"), "'json://h/p?-token=***'"),
])
def test_an_unforeseen_exception_keeps_its_type_and_loses_its_secrets(raised, shown):
    """A library's or a bug's exception: its text becomes a Prefect state message."""
    clean = redacted(raised)
    assert clean is raised and str(clean) == shown
    assert is_transient(redacted(ConnectionError(f"refused: s3://K:{SECRET}@b")))  # still retried


@pytest.mark.unit
def test_an_exception_whose_text_is_not_its_arguments_is_replaced_by_its_redacted_text():
    class Computed(Exception):
        def __str__(self):
            return f"computed from s3://K:{SECRET}@bucket"

    clean = redacted(Computed())
    assert type(clean) is RuntimeError and str(clean) == "Computed: computed from s3://***@bucket"


@pytest.mark.unit
def test_an_exception_that_cannot_be_rewritten_or_printed_is_raised_as_it_is():
    class Frozen(Exception):
        def __setattr__(self, name, value):
            raise AttributeError(name)

        def __str__(self):
            raise TypeError("no text")

    frozen = Frozen("a")
    assert redacted(frozen) is frozen


@pytest.mark.unit
def test_a_failed_trials_recorded_reason_is_redacted():
    """A trial's error is kept in the search's records, its report and artifact, not raised."""
    from tasks.trial import one_line

    assert one_line(OSError(f"cannot open s3://K:{SECRET}@bucket/x\nsecond line")) == \
        "OSError: cannot open s3://***@bucket/x"


LEAKY_FLOW = """
import sys
sys.path.insert(0, {repo!r})
from prefect import flow
from flows import plumbing
from mnist_pipeline.redaction import install_log_redaction
from tasks import approval
from tasks.stage import stage


@stage("leaky")
def leaky():
    raise ValueError("cannot reach s3://AKIAKEY:{secret}@bucket/prefix")


def unsendable(settings, outcome):
    raise ConnectionError("cannot reach json://hooks.example/p?-token={secret}")


@flow(name="leaky", retries=0)
def leaky_flow(where: str):
    with plumbing.retried_only_if_transient():
        if where == "task":
            leaky()
        if where == "approval":  # the child flow run that asks a person: its own state is stored too
            approval.notify.send = unsendable
            approval.approval_flow("r", 0.99, 0.97, "passed", "report", None, 60)
        raise OSError(2, "No such file or directory", "https://user:{secret}@mirror.example/x.gz")


install_log_redaction()
state = leaky_flow(sys.argv[1], return_state=True)
print("STATE", state.type.value, state.message)
"""


@pytest.mark.parametrize("where,shown", [("task", "s3://***@bucket/prefix"),
                                         ("flow", "https://***@mirror.example/x.gz"),
                                         ("approval", "json://hooks.example/p?-token=***")])
def test_an_unforeseen_exception_naming_a_secret_leaves_it_out_of_prefects_database(
        where, shown, tmp_path, prefect_db):
    """Raised in a stage, in the flow's body or in the approval's child flow, as a library's error
    would be: Prefect stores the exception's text as the task's and each flow's state message."""
    home = Path(prefect_home(tmp_path / "prefect", prefect_db))
    script = tmp_path / "leaky_flow.py"
    script.write_text(LEAKY_FLOW.format(repo=str(REPO), secret=SECRET))
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, str(script), where], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert "STATE FAILED Flow run encountered an exception: " in output and shown in output, output[-3000:]
    assert SECRET not in output
    db = sqlite3.connect(home / "prefect.db")
    try:
        messages = [m for (m,) in db.execute("SELECT message FROM flow_run_state UNION ALL "
                                             "SELECT message FROM task_run_state") if m]
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert any(shown in m for m in messages), messages
    assert SECRET not in dump  # no table at all: states, logs, events, results


def test_a_dask_workers_log_of_a_failed_call_names_no_secret(tmp_path):
    """A real `dask worker` whose warm-up cannot load the data (its only mirror is down) logs the
    failed call with its arguments, the mirrors' URLs among them, on its own stderr."""
    from tasks.trial import DataSource, warm_worker
    from tests.test_tune import DaskCluster

    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    cluster = DaskCluster(env, tmp_path, n_workers=1)
    try:
        mirror = f"http://mirror:{SECRET}@127.0.0.1:{free_port()}/mnist/"
        source = DataSource(str(tmp_path / "empty-store"), (mirror,), 5000, 42)
        (outcome,) = cluster.client().run(warm_worker, source, "mlp", on_error="return").values()
    finally:
        cluster.stop()
    log = (tmp_path / "worker-0.log").read_text()
    assert isinstance(outcome, Exception) and "Run Failed" in log, log[-3000:]
    assert "http://***@127.0.0.1:" in log and SECRET not in log, log[-3000:]


def test_an_undelivered_notification_names_its_url_without_apprise_tokens(monkeypatch):
    from mnist_pipeline import notify
    from mnist_pipeline.settings import load_settings

    port = free_port()
    monkeypatch.setenv("MNIST_NOTIFY_URL", f"json://127.0.0.1:{port}/hook?-token={SECRET}&+X-Auth={SECRET}")
    warnings = notify.send(load_settings(), notify.Outcome("run-1", "failed", "bad data"))
    assert warnings == [f"notification to json://127.0.0.1:{port}/hook?-token=***&+X-Auth=*** failed "
                        "(not delivered); the run's outcome is unchanged"]


def test_a_failed_delivery_to_a_token_url_leaves_the_token_in_no_output_and_not_in_prefects_database(
        mnist_mirror, tmp_path, prefect_db):
    """The run fails at once (a damaged registry), so its failure is notified; delivery fails."""
    home = Path(prefect_home(tmp_path / "prefect", prefect_db))
    store = tmp_path / "store"
    (store / "registry").mkdir(parents=True)
    (store / "registry" / "production.json").write_text('{"run_id": "x"}')
    token_urls = (f"json://127.0.0.1:{free_port()}/hook?-token={SECRET}&+X-Auth={SECRET},"
                  f"https://hooks.slack.com/services/T1/B1/{SECRET}")
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               MNIST_MIRRORS=str(mnist_mirror), MNIST_STORE_URL=str(store), MNIST_NOTIFY_URL=token_urls)
    env.pop("PREFECT_API_URL", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "flows/train_flow.py", "--epochs", "1"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    print(f"REDACTION failed delivery, token URL: exit {proc.returncode} after {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert "notification to json://127.0.0.1:" in output and "/hook?-token=***&+X-Auth=*** failed" in output
    assert SECRET not in output
    db = sqlite3.connect(home / "prefect.db")
    try:
        logged = [m for (m,) in db.execute("SELECT message FROM log")]
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert any("/hook?-token=***&+X-Auth=*** failed" in m for m in logged), logged[-20:]
    assert SECRET not in dump  # no table at all: logs, states, events, artifacts
