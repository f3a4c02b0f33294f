"""The dashboard (mnist_pipeline/dashboard.py) as a person meets it: `index.html` in the store,
refreshed by the registry's changes, opened in headless Chromium (Debian's), its report links
clicked, on a folder store and on S3 (moto, links presigned for MNIST_S3_PUBLIC_URL). Runs are
stored as the flow stores them (tests/fakes.py) and decided by the registry's own gate, as the flow
decides them; screenshots of every page opened are kept in test-artifacts/."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mnist_pipeline import dashboard, keys, registry
from mnist_pipeline.cli import main
from mnist_pipeline.settings import load_settings
from mnist_pipeline.store import LocalStore, open_store
from tests.browser import chromium_page, screenshot
from tests.fakes import cache_test_set, model_zoo, store_run


@pytest.fixture(scope="session")
def zoo(mnist_mirror):
    return model_zoo(mnist_mirror)


def decided_by_its_flow(store, run_id: str, zoo_model):
    """A run as the flow leaves it: its files and manifest, then its own decision through the
    registry's gate, recorded as the flow records it."""
    store_run(store, run_id, zoo_model, decide=None)
    return registry.promote(store, registry.stored_candidate(store, run_id), min_accuracy=0.5,
                            actor=f"flow-run:{run_id}", source="flow",
                            summary={"started_at": datetime.now(timezone.utc).isoformat(), "model": "mlp", "epochs": 3})


def tell_the_story(store, zoo, mnist_mirror, monkeypatch, capfd):
    """Three runs, promoted (a), blocked (b), promoted (c), then `mnist-pipeline rollback` (back
    to a): the store's index.html as the rollback left it. Returns the store as the CLI opens it."""
    if not store.url.startswith("s3://"):  # the s3 store's fixture has set the S3 environment
        monkeypatch.setenv("MNIST_STORE_URL", store.url)
    monkeypatch.setenv("MNIST_MIN_ACCURACY", "0.5")  # the zoo's models score 0.1-0.82
    cache_test_set(store, mnist_mirror)
    outcomes = [decided_by_its_flow(store, run_id, zoo[i]) for run_id, i in (("run-a", 1), ("run-b", 3), ("run-c", 0))]
    assert [o.promoted for o in outcomes] == [True, False, True]
    assert main(["rollback", "--reason", "run-c misreads sevens"]) == 0
    assert "Traceback" not in "".join(capfd.readouterr())
    return open_store(load_settings())


@pytest.fixture(params=["local", "s3"])
def story(request, zoo, mnist_mirror, monkeypatch, capfd):
    store = request.getfixturevalue(f"{request.param}_store")
    if request.param == "s3":  # as a browser reaches the endpoint: another host name than the pipeline's
        monkeypatch.setenv("MNIST_S3_PUBLIC_URL", request.getfixturevalue("moto_server").endpoint.replace(
            "127.0.0.1", "localhost"))
    return tell_the_story(store, zoo, mnist_mirror, monkeypatch, capfd)


def page_url(store) -> str:
    """How a person opens the store's index.html: the file, or a presigned link to it."""
    return store.link(keys.DASHBOARD) or Path(store.location(keys.DASHBOARD)).as_uri()


def cells(page, selector: str) -> list[str]:
    return [text.strip() for text in page.locator(selector).all_inner_texts()]


def test_four_decisions_in_order_production_marked_and_every_report_link_opens(story, request):
    store, kind = story, request.node.callspec.params["story"]
    with chromium_page() as page:
        page.goto(page_url(store))
        shot = screenshot(page, f"dashboard-{kind}-three-runs-and-a-rollback")
        # newest first: the rollback to a, c promoted, b blocked, a promoted
        assert cells(page, "table.decisions tr.decision td:nth-child(2) .badge:first-child") == [
            "rollback", "promoted", "blocked", "promoted"], shot
        assert cells(page, "table.decisions tr.decision td:nth-child(3)") == ["run-a", "run-c", "run-b", "run-a"]
        assert "run-c misreads sevens" in page.locator("table.decisions tr.decision").first.inner_text()
        assert "promotion blocked: " in page.locator("table.decisions tr.decision").nth(2).inner_text()
        # production is marked: the decision that made it, the chart, the lineage, the tile
        assert cells(page, "table.decisions tr.current td:nth-child(3)") == ["run-a"]
        assert cells(page, "table.decisions tr.current .badge") == ["rollback", "production"]
        assert cells(page, "table.lineage tr.current td:nth-child(3)") == ["run-a"]
        assert "run run-a" in page.locator(".tile.prod").inner_text()
        assert page.locator("svg.chart circle[r='9']").count() == 1  # the ring around production's run
        assert page.locator("svg.chart circle[r='4.5']").count() == 3  # one dot per run
        assert page.locator("svg.chart path[fill='#6b46c1']").count() == 1  # the rollback
        footer = page.locator("footer").inner_text()
        if kind == "s3":
            expires = re.search(r"expire (\d{4}-\d\d-\d\d \d\d:\d\d) UTC", footer).group(1)
            lifetime = datetime.strptime(expires, "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc) - datetime.now(
                timezone.utc)
            assert timedelta(days=6, hours=23) < lifetime <= timedelta(days=7)
        # every report link opens its run's report, clicked as a person clicks it
        links = page.locator("table.decisions a, table.lineage a")
        assert links.count() == 4 + 1
        for i in range(links.count()):
            run_id = links.nth(i).get_attribute("title").removeprefix("report of ")
            links.nth(i).click()
            page.wait_for_load_state()
            assert page.locator("body").inner_text() == f"report of {run_id}", page.url
            if i == 0:
                screenshot(page, f"dashboard-{kind}-link-opens-report")
            page.go_back()
        if kind == "local":  # nothing but the store's own files: it opens offline
            assert page.requests and all(url.startswith("file://") for url in page.requests), page.requests
        else:  # the page and the reports, each presigned for the browser's endpoint
            public = load_settings().s3_public_url
            assert all(url.startswith(public + "/") and "X-Amz-Signature=" in url for url in page.requests)


def test_written_elsewhere_its_links_still_open_the_stores_reports(local_store, zoo, mnist_mirror, monkeypatch,
                                                                    capfd, tmp_path):
    """On a folder store; on S3 the links are presigned, wherever the page is."""
    story = tell_the_story(local_store, zoo, mnist_mirror, monkeypatch, capfd)
    target = tmp_path / "elsewhere" / "deeper" / "dash.html"
    target.parent.mkdir(parents=True)
    assert main(["dashboard", "-o", str(target)]) == 0
    assert f"saved {target}" in capfd.readouterr().out
    html = target.read_text()
    assert 'href="../../store/runs/run-c/report.html"' in html  # relative to where it was written
    with chromium_page() as page:
        page.goto(target.as_uri())
        page.locator("table.decisions a").nth(1).click()  # run-c's, the second newest decision
        page.wait_for_load_state()
        assert page.locator("body").inner_text() == "report of run-c"
        assert page.url == (story.root / "runs" / "run-c" / "report.html").as_uri()


def test_new_data_accuracy_shows_when_runs_recorded_it(local_store, zoo, mnist_mirror):
    """metrics.json's "new_data" (written by runs trained on ingested data) and a history record's:
    a column in the table and teal diamonds in the chart; a store without any shows neither."""
    cache_test_set(local_store, mnist_mirror)
    decided_by_its_flow(local_store, "run-old", zoo[1])
    page = dashboard.build(local_store, 0.5).decode()
    assert "new data</th>" not in page and "accuracy on new data" not in page
    decided_by_its_flow(local_store, "run-new", zoo[0])
    metrics = json.loads(local_store.get(keys.metrics("run-new")))
    local_store.put(keys.metrics("run-new"), json.dumps(dict(metrics, new_data={
        "accuracy": 0.9123, "images": 1200, "versions": [1, 2]})).encode())
    registry.write_history(local_store, {"run_id": "run-rec", "decision": "blocked", "test_accuracy": 0.7,
                                         "source": "flow", "reason": "promotion blocked: test", "new_data": {
                                             "accuracy": 0.8456, "images": 300, "versions": [2]}})
    page = dashboard.build(local_store, 0.5).decode()
    assert "<th class=\"num\">new data</th>" in page and "accuracy on new data" in page
    assert "0.9123" in page and "0.8456" in page
    assert page.count('stroke="#0f766e" stroke-width="1.6"><title>') == 2  # a diamond per run that has it
    with chromium_page() as browser:
        path = local_store.root / "new-data-dashboard.html"
        path.write_bytes(page.encode())
        browser.goto(path.as_uri())
        screenshot(browser, "dashboard-new-data-accuracy")
        assert "0.9123" in browser.locator("table.decisions tr.decision").filter(has_text="run-new").inner_text()


def test_a_long_history_costs_a_bounded_number_of_reads(tmp_path, monkeypatch):
    """5,000 nights or 50: one listing of the history's keys, then at most POINTS records and a
    page of metrics files."""
    store = LocalStore(tmp_path / "store")
    start = datetime(2020, 1, 1, tzinfo=timezone.utc)
    for i in range(700):
        stamp = (start + timedelta(days=i)).strftime(keys.HISTORY_TIME_FORMAT)
        registry.write_history(store, {"run_id": f"run-{i:04d}", "decision": "blocked" if i % 3 else "promoted",
                                       "test_accuracy": 0.97 + (i % 7) / 1000, "source": "flow",
                                       "min_accuracy": 0.97, "reason": "stored by the test"},
                               keys.history_record(stamp, f"run-{i:04d}"))
    reads = []
    real_get = LocalStore.get_with_etag
    monkeypatch.setattr(LocalStore, "get_with_etag", lambda self, key: reads.append(key) or real_get(self, key))
    page = dashboard.build(store, 0.97).decode()
    history_reads = [k for k in reads if k.startswith(keys.HISTORY)]
    assert len(history_reads) <= dashboard.POINTS and len(set(history_reads)) == len(history_reads)
    assert len(reads) - len(history_reads) <= dashboard.NEWEST + 1  # the table's metrics, production.json
    assert "run-0699" in history_reads[-1] or any("run-0699" in k for k in history_reads)  # the newest, always
    assert "700 runs, 700 decisions" in page and "of 700 decisions are plotted" in page
    assert page.count('r="4.5"') <= dashboard.POINTS and len(page) < 300_000


def test_refreshed_by_promote_rollback_and_gc_and_known_to_verify(story, request, capfd):
    store = story
    before = store.get(keys.DASHBOARD)
    assert main(["promote", "run-c", "--reason", "sevens fixed"]) == 0
    after = store.get(keys.DASHBOARD).decode()
    assert after != before.decode() and "sevens fixed" in after
    assert "testing-secret" not in after  # presigned on S3: signed with the key, never carrying it
    store.delete(keys.DASHBOARD)
    assert main(["gc", "--keep-last", "1"]) == 0
    assert "sevens fixed" in store.get(keys.DASHBOARD).decode()
    capfd.readouterr()
    assert main(["verify"]) == 0, capfd.readouterr()
    assert "foreign" not in capfd.readouterr().out


def test_a_dashboard_that_cannot_be_written_is_a_warning_not_another_outcome(local_store, zoo, mnist_mirror,
                                                                             monkeypatch, capfd):
    monkeypatch.setenv("MNIST_STORE_URL", local_store.url)
    monkeypatch.setenv("MNIST_MIN_ACCURACY", "0.5")
    cache_test_set(local_store, mnist_mirror)
    store_run(local_store, "run-a", zoo[0], decide="blocked")
    (local_store.root / keys.DASHBOARD).mkdir()  # something that is not a file is in its way
    capfd.readouterr()
    assert main(["promote", "run-a"]) == 0
    out, err = capfd.readouterr()
    assert "promoted: run-a is in production" in out and "Traceback" not in out + err
    assert re.search(r"warning: the dashboard \(.*index.html\) could not be refreshed: ", err), err


def test_a_damaged_record_is_named_on_the_page_which_is_built_all_the_same(tmp_path):
    store = LocalStore(tmp_path / "store")
    registry.write_history(store, {"run_id": "run-ok", "decision": "blocked", "test_accuracy": 0.96, "source": "flow",
                                   "reason": "promotion blocked: 0.9600 < 0.9700"})
    damaged = keys.history_record("20260101T000000.000000Z", "run-bad")
    store.put(damaged, b"{not json")
    page = dashboard.build(store, 0.97).decode()
    assert "Problems in the registry" in page and f"{damaged} is damaged: not JSON" in page
    assert "run-ok" in page and "2 runs, 2 decisions" in page
