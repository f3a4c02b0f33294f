"""Gate rules, and the registry's conditional writes on both store backends."""

import json
import threading

import pytest

from mnist_pipeline import registry
from mnist_pipeline.errors import UnsafeModel
from mnist_pipeline.models import model_to_bytes
from tests.conftest import assert_promotions_chain


# -- gate rules (pure) ----------------------------------------------------------------------------
def test_threshold_blocks_below_and_passes_at():
    blocked = registry.gate(0.962, 0.97, None)
    assert not blocked.promote and blocked.reason == "promotion blocked: 0.962 < 0.970"
    assert registry.gate(0.97, 0.97, None).promote


def test_champion_rule_and_tolerance():
    prod = {"run_id": "champ", "test_accuracy": 0.985}
    assert registry.gate(0.981, 0.97, prod, max_regression=0.005).promote  # within tolerance
    worse = registry.gate(0.979, 0.97, prod, max_regression=0.005)
    assert not worse.promote and "below production champ (0.9850)" in worse.reason
    assert worse.production_run_id == "champ"


def test_allow_regression_overrides_the_champion_but_never_the_threshold():
    prod = {"run_id": "champ", "test_accuracy": 0.99}
    assert registry.gate(0.975, 0.97, prod, allow_regression=True).promote
    assert not registry.gate(0.965, 0.97, prod, allow_regression=True).promote


# -- registry on a store ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_bytes():
    import keras

    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10)])
    return model_to_bytes(model)


def add_run(store, run_id, accuracy, model_bytes):
    store.put(f"runs/{run_id}/model.keras", model_bytes)
    store.put(f"runs/{run_id}/metrics.json", json.dumps({"test_accuracy": accuracy}).encode())
    return f"runs/{run_id}/model.keras"


def promote(store, run_id, acc, **kw):
    return registry.promote(store, run_id, acc, f"runs/{run_id}/model.keras", min_accuracy=0.97, **kw)


def test_first_promotion_then_blocked_then_better(store, tiny_model_bytes):
    for run_id, acc in (("r1", 0.975), ("r2", 0.96), ("r3", 0.98)):
        add_run(store, run_id, acc, tiny_model_bytes)
    assert promote(store, "r1", 0.975).promoted
    before = store.get(registry.PRODUCTION_KEY)
    blocked = promote(store, "r2", 0.96)
    assert not blocked.promoted and blocked.reason == "promotion blocked: 0.960 < 0.970"
    assert store.get(registry.PRODUCTION_KEY) == before  # untouched, byte for byte
    assert promote(store, "r3", 0.98).promoted
    prod, _ = registry.read_production(store)
    assert prod["run_id"] == "r3" and prod["previous_run_id"] == "r1" and prod["model_key"] == "runs/r3/model.keras"
    decisions = [(r["run_id"], r["decision"]) for r in registry.read_history(store)]
    assert decisions == [("r1", "promoted"), ("r2", "blocked"), ("r3", "promoted")]


def test_promoting_twice_is_a_no_op(store, tiny_model_bytes):
    add_run(store, "r1", 0.98, tiny_model_bytes)
    assert promote(store, "r1", 0.98).promoted
    again = promote(store, "r1", 0.98)
    assert again.promoted and again.already and again.history_key is None
    assert len(registry.read_history(store)) == 1


def test_a_stale_etag_is_refused_and_the_loser_decides_again(store, tiny_model_bytes, monkeypatch):
    add_run(store, "champ", 0.99, tiny_model_bytes)
    add_run(store, "late", 0.975, tiny_model_bytes)
    assert promote(store, "champ", 0.99).promoted
    real_read = registry.read_production
    calls = []

    def read_then_race(st):
        current, etag = real_read(st)
        if not calls:  # between our read and our write, another promotion lands
            calls.append(1)
            st.put_if_match(registry.PRODUCTION_KEY, json.dumps(dict(current, run_id="other", test_accuracy=0.995)).encode(), etag)
        return current, etag

    monkeypatch.setattr(registry, "read_production", read_then_race)
    result = promote(store, "late", 0.975, allow_regression=True)
    # its first write carried a stale ETag and was refused; re-decided, it still passes on purpose
    assert result.promoted and result.production["previous_run_id"] == "other"


def test_the_gate_rechecks_the_champion_after_a_lost_race(store, tiny_model_bytes, monkeypatch):
    add_run(store, "cand", 0.975, tiny_model_bytes)
    real_read = registry.read_production
    state = {"raced": False}

    def read_then_race(st):
        current, etag = real_read(st)
        if not state["raced"]:
            state["raced"] = True
            st.put_if_absent(registry.PRODUCTION_KEY, json.dumps({"run_id": "better", "test_accuracy": 0.995}).encode())
        return current, etag

    monkeypatch.setattr(registry, "read_production", read_then_race)
    result = promote(store, "cand", 0.975)
    assert not result.promoted and "below production better" in result.reason
    assert real_read(store)[0]["run_id"] == "better"


def test_concurrent_promotions_leave_one_winner_and_a_truthful_history(store, tiny_model_bytes):
    for i in range(4):
        add_run(store, f"c{i}", 0.975 + i * 0.001, tiny_model_bytes)
    results = {}

    def go(i):
        results[i] = promote(store, f"c{i}", 0.975 + i * 0.001)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    prod, _ = registry.read_production(store)
    promoted = {f"c{i}" for i, r in results.items() if r.promoted}
    assert prod["run_id"] in promoted
    history = registry.read_history(store)
    assert sorted(r["run_id"] for r in history) == [f"c{i}" for i in range(4)]
    assert {r["run_id"] for r in history if r["decision"] == "promoted"} == promoted
    assert_promotions_chain([r for r in history if r["decision"] == "promoted"], prod["run_id"])


def test_a_model_that_does_not_load_is_never_promoted(store):
    store.put("runs/bad/model.keras", b"not a zip")
    with pytest.raises(UnsafeModel):
        promote(store, "bad", 0.99)
    assert registry.read_production(store) == (None, None)


def test_a_lambda_layer_is_refused_by_safe_mode(store):
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x * 2)])
    store.put("runs/evil/model.keras", model_to_bytes(model))
    with pytest.raises(UnsafeModel, match="arbitrary code"):
        promote(store, "evil", 0.99)
    assert registry.read_production(store) == (None, None)


def test_rollback_walks_back_the_chain(store, tiny_model_bytes):
    for run_id, acc in (("a", 0.975), ("b", 0.98), ("c", 0.985)):
        add_run(store, run_id, acc, tiny_model_bytes)
        assert promote(store, run_id, acc).promoted
    first = registry.rollback(store, min_accuracy=0.97, note="c misbehaves")
    assert first.promoted and registry.read_production(store)[0]["run_id"] == "b"
    second = registry.rollback(store, min_accuracy=0.97)
    assert second.promoted and registry.read_production(store)[0]["run_id"] == "a"
    with pytest.raises(registry.RegistryError, match="no earlier production model"):
        registry.rollback(store, min_accuracy=0.97)
    assert [r["decision"] for r in registry.read_history(store)][-2:] == ["rollback", "rollback"]
