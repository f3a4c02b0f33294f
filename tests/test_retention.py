"""`mnist-pipeline gc` on both backends: what it deletes and what it never does, a dry run, and a
promotion racing it (deterministic interleavings of the two through the registry's writes)."""

from __future__ import annotations

import pytest

from mnist_pipeline import keys, registry, retention
from mnist_pipeline.cli import main
from mnist_pipeline.errors import RegistryError
from mnist_pipeline.model import model_from_bytes
from tests.fakes import cache_test_set, model_zoo, store_run

HEAVY = ("model.keras", "predictions.npy", "plots/confusion_matrix.png")
KEPT = ("manifest.json", "metrics.json", "report.html")


@pytest.fixture(scope="session")
def zoo(mnist_mirror):
    return model_zoo(mnist_mirror)


@pytest.fixture
def six_runs(store, zoo, mnist_mirror, monkeypatch):
    """r0 (oldest) .. r5; r0 then r1 then r2 promoted, so production is r2 with stack [r0, r1]."""
    if not store.url.startswith("s3://"):
        monkeypatch.setenv("MNIST_STORE_URL", store.url)
    cache_test_set(store, mnist_mirror)
    for i in range(6):
        store_run(store, f"r{i}", zoo[i % 3], minutes_ago=60 - i)
    for run_id in ("r0", "r1", "r2"):
        assert registry.promote(store, registry.stored_candidate(store, run_id), min_accuracy=0.5,
                                allow_regression=True).promoted
    return store


def files_of(store, run_id):
    return {k.split("/", 2)[2] for k in store.list(f"runs/{run_id}/")}


def test_gc_keeps_production_the_rollback_stack_and_the_audit_trail(six_runs, capsys):
    store = six_runs
    history = {k: store.get(k) for k in registry.history_keys(store)}
    assert main(["gc", "--keep-last", "2"]) == 0
    out = capsys.readouterr().out
    assert "deleted runs/r3/model.keras (" in out and out.strip().splitlines()[-1].startswith("deleted 3 files of 1 runs")
    assert not set(HEAVY) & files_of(store, "r3") and set(KEPT) <= files_of(store, "r3")
    for run_id in ("r0", "r1", "r2", "r4", "r5"):  # the stack, production, the newest two
        assert set(HEAVY) <= files_of(store, run_id), run_id
    assert {k: store.get(k) for k in registry.history_keys(store)} == history  # untouched
    production, _ = registry.read_production(store)
    for entry in [*production.stack, production.entry()]:  # every model rollback may need still loads
        model_from_bytes(registry.verified_bytes(store, entry.model_key, entry.model_sha256, "kept"))
    assert registry.rollback(store, min_accuracy=0.5).production["run_id"] == "r1"
    assert main(["verify"]) == 0, capsys.readouterr().out  # collected files are expected to be gone
    with pytest.raises(RegistryError, match="run r3's model was deleted by `mnist-pipeline gc`"):
        registry.stored_candidate(store, "r3")


def test_a_dry_run_deletes_nothing(six_runs, capsys):
    before = six_runs.list("")
    assert main(["gc", "--keep-last", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete runs/r3/model.keras" in out and "would delete runs/r4/predictions.npy" in out
    assert "would delete runs/r2/" not in out and "nothing was deleted" in out
    assert six_runs.list("") == before


def test_keep_days_keeps_young_runs(six_runs):
    plan = retention.plan(six_runs, keep_last=1, keep_days=1)
    assert plan.collect == {} and plan.kept["r3"] == "younger than 1 days"


def test_with_nothing_in_production_models_are_kept(store, zoo, mnist_mirror):
    cache_test_set(store, mnist_mirror)
    for i in range(3):
        store_run(store, f"n{i}", zoo[0], minutes_ago=10 - i)
    todo = retention.plan(store, keep_last=1)
    retention.collect(store, todo, actor="test", echo=lambda _: None)
    assert "model.keras" in files_of(store, "n0") and "predictions.npy" not in files_of(store, "n0")
    registry.promote(store, registry.stored_candidate(store, "n0"), min_accuracy=0.5)
    assert registry.read_production(store)[0].run_id == "n0"  # still promotable: its model was kept


def test_a_promotion_between_the_plan_and_the_deletes_keeps_its_model(six_runs):
    store = six_runs
    todo = retention.plan(store, keep_last=1)
    assert "r3" in todo.collect
    assert registry.promote(store, registry.stored_candidate(store, "r3"), min_accuracy=0.5,
                            allow_regression=True).promoted
    messages = []
    retention.collect(store, todo, actor="test", echo=messages.append)
    assert "kept r3: production (changed while gc ran)" in messages
    assert set(HEAVY) <= files_of(store, "r3") and not store.exists("runs/r3/collected.json")
    assert "r4" not in [m.split()[1] for m in messages if m.startswith("kept")]


def test_a_promotion_that_read_production_before_the_fence_decides_again_and_is_refused(six_runs, monkeypatch):
    """The promotion has read production and checked r3 is unmarked; gc then marks r3, fences
    and deletes; the promotion's conditional write is refused, it decides again, sees the mark."""
    store = six_runs
    candidate = registry.stored_candidate(store, "r3")
    real_verify = registry.promotion._verify_candidate_bytes

    def gc_runs_now(st, cand):
        real_verify(st, cand)
        retention.collect(st, retention.plan(st, keep_last=1), actor="gc", echo=lambda _: None)

    monkeypatch.setattr(registry.promotion, "_verify_candidate_bytes", gc_runs_now)
    before = registry.read_production(store)[0].run_id
    with pytest.raises(RegistryError, match="run r3's model was deleted by `mnist-pipeline gc`"):
        registry.promote(store, candidate, min_accuracy=0.5, allow_regression=True)
    production, _ = registry.read_production(store)
    assert production.run_id == before and not store.exists("runs/r3/model.keras")
    registry.check_production_model(store, production)  # production names a model that is there


def test_the_flow_s_retention_step_collects_and_never_fails_the_run(six_runs, monkeypatch):
    """What the flow runs after its decision when MNIST_KEEP_LAST is set (tasks/retention.py)."""
    from prefect.logging import disable_run_logger

    from tasks.retention import retention_task

    with disable_run_logger():
        assert retention_task.fn(six_runs, 2, "run-x") == []
        assert "model.keras" not in files_of(six_runs, "r3")
        six_runs.put(keys.PRODUCTION, b"{damaged")
        warnings = retention_task.fn(six_runs, 2, "run-x")
    assert len(warnings) == 1 and warnings[0].startswith("retention (MNIST_KEEP_LAST=2) failed: DamagedRegistry")
