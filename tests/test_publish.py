"""What people see of a decided run: the summary artifact's text, and notifications delivered
through Apprise to a real HTTP receiver on 127.0.0.1 (and not delivered to a dead one)."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from mnist_pipeline import notify
from mnist_pipeline.settings import load_settings
from tasks.publish import summary_markdown
from tests.conftest import free_port

pytestmark = pytest.mark.unit  # no server, no training: `make test-unit`

METRICS = {"test_accuracy": 0.9698, "test_accuracy_ci95": [0.966, 0.973], "test_loss": 0.1,
           "test_errors": 302, "test_samples": 10000}


def test_the_summary_states_the_decision_once_with_four_decimals():
    blocked = notify.Outcome("run-1", "blocked", "promotion blocked: 0.9698 < 0.9700", 0.9698, 0.97, "prod-0")
    md = summary_markdown("run-1", {"model": "mlp", "epochs": 1, "batch_size": 32}, METRICS, blocked, "/s/r.html")
    assert "**Blocked**: production unchanged. promotion blocked: 0.9698 < 0.9700" in md
    assert "| model | mlp, 1 epoch, batch 32 |" in md and "| threshold | 0.9700 |" in md
    assert "prod-0" in md and "Report: /s/r.html" in md and "None" not in md


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that keeps what is POSTed to it."""

    def __init__(self):
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_a_blocked_run_is_sent_and_a_promotion_only_with_notify_on_all(receiver, monkeypatch):
    monkeypatch.setenv("MNIST_NOTIFY_URL", receiver.url)
    blocked = notify.Outcome("run-1", "blocked", "promotion blocked: 0.9698 < 0.9700", 0.9698, 0.97, None, "/s/r.html")
    assert notify.send(load_settings(), blocked) == []
    assert notify.send(load_settings(), notify.Outcome("run-2", "promoted", "0.99 >= 0.97", 0.99, 0.97)) == []
    assert len(receiver.received) == 1
    message = receiver.received[0]
    assert message["title"] == "mnist-pipeline: run run-1 blocked"
    assert "Test accuracy 0.9698 < threshold 0.9700." in message["message"] and "Report: /s/r.html" in message["message"]
    monkeypatch.setenv("MNIST_NOTIFY_ON", "all")
    notify.send(load_settings(), notify.Outcome("run-2", "promoted", "0.99 >= 0.97", 0.99, 0.97))
    assert [m["title"] for m in receiver.received][-1] == "mnist-pipeline: run run-2 promoted"


def test_an_undeliverable_notification_is_a_warning_without_the_secret(monkeypatch, receiver):
    dead = f"json://user:s3cr3t-token@127.0.0.1:{free_port()}/"
    monkeypatch.setenv("MNIST_NOTIFY_URL", f"{dead},{receiver.url}")
    warnings = notify.send(load_settings(), notify.Outcome("run-1", "failed", "bad data"))
    assert len(warnings) == 1 and "failed (not delivered); the run's outcome is unchanged" in warnings[0]
    assert "s3cr3t-token" not in warnings[0] and "127.0.0.1" in warnings[0]
    assert len(receiver.received) == 1  # the other URL still got it


def test_a_run_waiting_for_approval_is_sent_with_the_link_to_answer_it(receiver, monkeypatch):
    monkeypatch.setenv("MNIST_NOTIFY_URL", receiver.url)
    waiting = notify.Outcome("run-7", "approval", "0.9801 >= 0.9700", 0.9801, 0.97, "prod-3", "http://s3/report",
                             action="Approve or reject it by 2026-12-05 02:14:00 UTC in the Prefect UI (Resume): "
                                    "http://127.0.0.1:4200/runs/flow-run/abc")
    assert notify.send(load_settings(), waiting) == []  # sent, also with MNIST_NOTIFY_ON=problems
    message = receiver.received[0]
    assert message["title"] == "mnist-pipeline: run run-7 waiting for approval"
    assert message["message"].splitlines()[0] == "Run run-7: WAITING FOR APPROVAL."
    assert message["message"].splitlines()[-1].endswith("(Resume): http://127.0.0.1:4200/runs/flow-run/abc")
