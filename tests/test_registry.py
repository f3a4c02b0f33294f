"""Gate rules, and the registry on every backend (a folder, moto, radosgw): conditional writes,
the rollback stack, what promotion trusts (hashes, a measured accuracy), and damaged registry
objects."""

import json
import threading

import pytest

from mnist_pipeline import keys, registry
from mnist_pipeline import store as store_module
from mnist_pipeline.errors import DamagedRegistry, PreconditionFailed, RegistryError, StoreError, UnsafeModel
from mnist_pipeline.model import model_to_bytes
from tests.conftest import assert_promotions_chain
from tests.fakes import ZooModel, cache_test_set, model_zoo, store_run


# -- gate rules (pure) ----------------------------------------------------------------------------
def prod(run_id, acc):
    return registry.Production(run_id=run_id, test_accuracy=acc, model_key=keys.model(run_id),
                               model_sha256="0" * 64, promoted_at="2026-01-01T00:00:00+00:00")


def test_threshold_blocks_below_and_passes_at_with_four_decimals():
    blocked = registry.gate(0.9698, 0.97, None)
    assert not blocked.promote and blocked.reason == "promotion blocked: 0.9698 < 0.9700"
    assert registry.gate(0.97, 0.97, None).promote


def test_champion_rule_and_tolerance():
    champ = prod("champ", 0.985)
    assert registry.gate(0.981, 0.97, champ, max_regression=0.005).promote  # within tolerance
    worse = registry.gate(0.979, 0.97, champ, max_regression=0.005)
    assert not worse.promote and "below production champ (0.9850)" in worse.reason
    assert worse.production_run_id == "champ"


def test_allow_regression_overrides_the_champion_but_never_the_threshold():
    champ = prod("champ", 0.99)
    assert registry.gate(0.975, 0.97, champ, allow_regression=True).promote
    assert not registry.gate(0.965, 0.97, champ, allow_regression=True).promote


def test_new_data_accuracy_blocks_only_when_asked_for_and_says_so_like_the_other_rules():
    assert registry.gate(0.98, 0.97, None, new_data_accuracy=0.6).promote  # not asked for: not a check
    blocked = registry.gate(0.98, 0.97, None, new_data_accuracy=0.8912, min_new_data_accuracy=0.9)
    assert not blocked.promote and blocked.reason == "promotion blocked: new-data accuracy 0.8912 < 0.9000"
    assert blocked.checks[-1] == registry.Check("new_data", "0.8912 < 0.9000", False)
    both = registry.gate(0.96, 0.97, None, new_data_accuracy=0.5, min_new_data_accuracy=0.9)
    assert both.reason == "promotion blocked: 0.9600 < 0.9700; new-data accuracy 0.5000 < 0.9000"
    nothing_ingested = registry.gate(0.98, 0.97, None, min_new_data_accuracy=0.9)
    assert nothing_ingested.promote and nothing_ingested.checks[-1].text.startswith("no ingested holdout images")


RECALL = {"0": 0.9929, "1": 0.9921, "2": 0.9767, "3": 0.9792, "4": 0.9786, "5": 0.9630, "6": 0.9812, "7": 0.9669,
          "8": 0.9733, "9": 0.9742}  # the README model's, overall 0.9790


def test_the_per_digit_gate_blocks_naming_each_digit_below_it_and_its_recall():
    blocked = registry.gate(0.979, 0.97, None, class_recall=RECALL, min_class_recall=0.97)
    assert not blocked.promote
    assert blocked.reason == "promotion blocked: per-digit gate: recall of digits 5 (0.9630), 7 (0.9669) < 0.9700"
    assert [c.rule for c in blocked.checks] == ["threshold", "class_recall"] and not blocked.checks[1].ok
    one = registry.gate(0.979, 0.97, None, class_recall=RECALL, min_class_recall=0.965)
    assert one.reason == "promotion blocked: per-digit gate: recall of digit 5 (0.9630) < 0.9650"
    passed = registry.gate(0.979, 0.97, None, class_recall=RECALL, min_class_recall=0.96)
    assert passed.promote and passed.checks[1].text == "lowest recall 0.9630 (digit 5) ≥ 0.9600"
    both = registry.gate(0.969, 0.97, None, class_recall=RECALL, min_class_recall=0.97)
    assert both.reason == ("promotion blocked: 0.9690 < 0.9700; "
                           "per-digit gate: recall of digits 5 (0.9630), 7 (0.9669) < 0.9700")
    assert registry.gate(0.979, 0.97, None, class_recall=RECALL).promote  # off unless asked for
    with pytest.raises(ValueError):  # a rule that cannot be checked is never taken as passed
        registry.gate(0.979, 0.97, None, min_class_recall=0.9)


# -- on a store -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def zoo(mnist_mirror) -> list[ZooModel]:
    return model_zoo(mnist_mirror)


@pytest.fixture
def runs(store, zoo, mnist_mirror):
    """Four finished runs, best to worst (about 0.82 down to 0.1), and the cached test set."""
    cache_test_set(store, mnist_mirror)
    for i, name in enumerate("abcd"):
        store_run(store, name, zoo[i], minutes_ago=10 - i)
    return {name: zoo[i].accuracy for i, name in enumerate("abcd")}


MIN = 0.5  # the zoo's models score 0.1-0.82: thresholds in these tests are relative to that


def promote(store, run_id, **kw):
    kw.setdefault("min_accuracy", MIN)
    return registry.promote(store, registry.stored_candidate(store, run_id), **kw)


def production_bytes(store):
    return store.get(keys.PRODUCTION)


def test_first_promotion_then_blocked_then_better(store, runs):
    assert promote(store, "b").promoted
    before = production_bytes(store)
    blocked = promote(store, "d")  # about 0.1
    assert not blocked.promoted and blocked.reason.startswith("promotion blocked: 0.1")
    assert production_bytes(store) == before  # untouched, byte for byte
    assert promote(store, "a").promoted
    current, _ = registry.read_production(store)
    assert current.run_id == "a" and [e.run_id for e in current.stack] == ["b"]
    assert [(r["run_id"], r["decision"]) for r in registry.read_history(store)][-3:] == [
        ("b", "promoted"), ("d", "blocked"), ("a", "promoted")]


def test_the_accuracy_promotion_trusts_is_measured_not_read(store, runs, zoo):
    """metrics.json (and the manifest) of a weak run edited to 0.999: nothing is promoted."""
    metrics = json.loads(store.get("runs/d/metrics.json"))
    store.put("runs/d/metrics.json", json.dumps(dict(metrics, test_accuracy=0.999)).encode())
    assert registry.stored_candidate(store, "d").test_accuracy == zoo[3].accuracy  # metrics.json ignored
    manifest = json.loads(store.get("runs/d/manifest.json"))
    store.put("runs/d/manifest.json", json.dumps(dict(manifest, test_accuracy=0.999)).encode())
    with pytest.raises(DamagedRegistry) as err:
        registry.stored_candidate(store, "d")
    assert str(err.value).startswith("runs/d/manifest.json records test accuracy 0.9990, but its model scores 0.1")
    assert registry.read_production(store) == (None, None)


def test_a_swapped_model_is_refused_naming_the_key_and_both_hashes(store, runs, zoo):
    store.put("runs/c/model.keras", zoo[0].data)  # another run's model in c's place
    with pytest.raises(DamagedRegistry) as err:
        registry.stored_candidate(store, "c")
    recorded = registry.sha256(zoo[2].data)
    assert str(err.value).startswith(f"runs/c/model.keras (model of run c) has SHA-256 "
                                     f"{registry.sha256(zoo[0].data)}, but {recorded} was recorded")


def test_a_damaged_production_model_is_reported_not_used_as_the_champion(store, runs):
    assert promote(store, "b").promoted
    store.put("runs/b/model.keras", b"garbage")
    before = production_bytes(store)
    with pytest.raises(DamagedRegistry, match=r"runs/b/model.keras \(production model of b\) has SHA-256"):
        promote(store, "a")
    store.delete("runs/b/model.keras")
    with pytest.raises(DamagedRegistry, match=r"runs/b/model.keras \(production model of b\) is missing"):
        promote(store, "a")
    assert production_bytes(store) == before
    forced = promote(store, "a", force=True)  # the way out: the champion rule is skipped, kept on record
    assert forced.promoted and registry.read_production(store)[0].stack == []


def test_rollback_is_a_stack_of_promotions(store, runs):
    """promote A, promote B, rollback (-> A), promote C, rollback (-> A), rollback: refused."""
    assert promote(store, "a").promoted and promote(store, "b", allow_regression=True).promoted
    assert registry.rollback(store, min_accuracy=MIN).production["run_id"] == "a"
    assert promote(store, "c", allow_regression=True).promoted
    assert registry.rollback(store, min_accuracy=MIN).production["run_id"] == "a"
    before = production_bytes(store)
    with pytest.raises(RegistryError, match="production a has no earlier production model to roll back to"):
        registry.rollback(store, min_accuracy=MIN)
    assert production_bytes(store) == before and registry.read_production(store)[0].run_id == "a"
    decisions = [(r["decision"], r["run_id"]) for r in registry.read_history(store) if r["source"] == "cli"]
    assert decisions == [("promoted", "a"), ("promoted", "b"), ("rollback", "a"), ("promoted", "c"), ("rollback", "a")]


def test_rollback_onto_a_swapped_model_is_refused(store, runs, zoo):
    assert promote(store, "a").promoted and promote(store, "b", allow_regression=True).promoted
    store.put("runs/a/model.keras", zoo[3].data)
    before = production_bytes(store)
    with pytest.raises(DamagedRegistry, match="runs/a/model.keras .* was recorded when it was stored"):
        registry.rollback(store, min_accuracy=MIN)
    assert production_bytes(store) == before


def test_rollback_applies_the_threshold_to_what_the_model_scores(store, runs):
    assert promote(store, "b").promoted and promote(store, "a").promoted
    result = registry.rollback(store, min_accuracy=0.99)
    assert not result.promoted and result.reason.startswith("rollback blocked: b scores 0.")
    assert registry.read_production(store)[0].run_id == "a"


@pytest.mark.parametrize("content,problem", [
    (b"{not json", "not JSON"),
    (b"{}", "run_id: Field required"),
    (b"null", "Input should be a valid dictionary"),
    (b'{"test_accuracy": 0.98}', "run_id: Field required"),
    (None, "test_accuracy: Input should be a valid number"),  # a string accuracy
])
def test_a_damaged_production_json_is_one_line_and_never_overwritten(store, runs, content, problem):
    assert promote(store, "b").promoted
    if content is None:
        current = json.loads(production_bytes(store))
        content = json.dumps(dict(current, test_accuracy="0.98")).encode()
    store.put(keys.PRODUCTION, content)
    with pytest.raises(DamagedRegistry) as err:
        promote(store, "a")
    message = str(err.value)
    assert message.startswith("registry/production.json is damaged: ") and problem in message
    assert message.endswith("; run `mnist-pipeline verify` for the full picture; `mnist-pipeline promote RUN "
                            "--force` replaces it, keeping its bytes in the history")
    assert "\n" not in message and production_bytes(store) == content
    with pytest.raises(DamagedRegistry):
        registry.rollback(store, min_accuracy=MIN)
    assert production_bytes(store) == content
    forced = promote(store, "a", force=True)
    assert forced.promoted
    kept = registry.read_history(store)[-1]["replaced_damaged_production"]
    assert __import__("base64").b64decode(kept["base64"]) == content


# -- verify against the history: the replay agrees after each repair, and says when it does not --
def test_verify_names_a_production_that_the_history_contradicts_in_one_line(store, runs):
    from mnist_pipeline.audit import verify

    assert promote(store, "a").promoted and promote(store, "b").promoted
    assert verify(store).problems == []
    record = registry.history_keys(store)[-1]  # b's promotion
    store.delete(record)
    assert verify(store).problems == [
        f"registry/production.json names its history record {record}, which is missing",
        "registry/production.json names b with rollback stack ['a'], but the history says a with []"]


@pytest.mark.parametrize("damage", ["not JSON", "a string accuracy", "its model"])
def test_verify_is_clean_after_promote_force_replaced_a_damaged_production(store, runs, zoo, damage):
    """The history keeps the damaged production.json's bytes; the replay carries over the stack
    the forced promotion kept (none when those bytes do not parse)."""
    from mnist_pipeline.audit import verify

    assert promote(store, "c").promoted and promote(store, "b").promoted
    if damage == "not JSON":
        store.put(keys.PRODUCTION, b'{"run_id": "b", ')
    elif damage == "a string accuracy":  # JSON with c on its stack, but not a production record
        current = json.loads(production_bytes(store))
        store.put(keys.PRODUCTION, json.dumps(dict(current, test_accuracy="0.98")).encode())
    else:
        store.put("runs/b/model.keras", zoo[3].data)  # production's model swapped
    assert promote(store, "a", force=True).promoted
    stack = [e.run_id for e in registry.read_production(store)[0].stack]
    assert stack == (["c"] if damage == "its model" else [])
    problems = verify(store).problems
    assert not [p for p in problems if "history" in p], problems


def test_verify_names_a_deleted_production_json_and_is_clean_once_it_is_promoted_again(store, runs):
    from mnist_pipeline.audit import verify

    assert promote(store, "b").promoted and promote(store, "a").promoted
    store.delete(keys.PRODUCTION)
    assert verify(store).problems == [
        "registry/production.json is missing, but the history says a is in production (rollback stack ['b']); "
        "`mnist-pipeline promote a` writes it again, with an empty rollback stack"]
    assert promote(store, "a").promoted
    assert verify(store).problems == []


@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize("occupant", ["folder", "dangling link"])
def test_a_folder_or_a_dangling_link_at_production_json_is_named_not_taken_for_a_race(store, runs, occupant):
    from mnist_pipeline.audit import verify

    path = store.root / keys.PRODUCTION
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir() if occupant == "folder" else path.symlink_to(store.root / "nowhere")
    what = "a folder" if occupant == "folder" else "a symbolic link to nothing"
    history = registry.history_keys(store)
    with pytest.raises(StoreError) as err:
        promote(store, "a")
    assert str(err.value).startswith(f"registry/production.json in the store {store.url} is {what}, not a regular file")
    assert registry.history_keys(store) == history  # not recorded as blocked ("production kept changing")
    assert any(p.startswith(f"registry/production.json in the store {store.url} is {what}")
               for p in verify(store).problems)


def test_a_damaged_history_record_is_named(store, runs):
    assert promote(store, "a").promoted
    key = registry.history_keys(store)[-1]
    store.put(key, b"{broken")
    with pytest.raises(DamagedRegistry, match=f"{key} is damaged: not JSON"):
        registry.read_history(store)
    store.put(key, json.dumps({"run_id": "a"}).encode())
    with pytest.raises(DamagedRegistry, match=f"{key} is damaged: decision: Field required"):
        registry.read_history(store)


def test_incomplete_runs_are_refused(store, runs):
    store.delete("runs/c/manifest.json")
    with pytest.raises(RegistryError, match="run c is incomplete: it has no manifest"):
        registry.stored_candidate(store, "c")
    store.delete("runs/b/report.html")
    with pytest.raises(RegistryError, match="run b is incomplete: runs/b/report.html is missing"):
        registry.stored_candidate(store, "b")


def test_promoting_the_production_run_applies_the_threshold_asked_for(store, runs):
    assert promote(store, "a").promoted
    again = promote(store, "a")
    assert again.promoted and again.already and again.history_key is None
    strict = promote(store, "a", min_accuracy=0.99)
    assert not strict.promoted and "is already in production, but 0.8" in strict.reason
    assert [r["decision"] for r in registry.read_history(store) if r["source"] == "cli"] == ["promoted"]


class FailingHistoryWrites:
    """The store, except that history records cannot be written (a disk filling up right after
    the promotion)."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def put_if_absent(self, key, data, content_type="application/json"):
        if key.startswith(keys.HISTORY):
            raise StoreError(f"cannot create {key} in the store: No space left on device")
        return self._store.put_if_absent(key, data, content_type)


def test_a_failure_after_the_promotion_is_reported_as_what_it_is(store, runs):
    result = promote(FailingHistoryWrites(store), "a")
    assert result.promoted and result.history_key is None
    assert result.warnings and "production changed, but its history record" in result.warnings[0]
    current, _ = registry.read_production(store)
    assert current.run_id == "a" and not store.exists(current.history_key)
    # the retry (or the next promotion attempt of this run) writes the missing record, once
    again = promote(store, "a")
    assert again.already and again.history_key == current.history_key and store.exists(current.history_key)


def test_a_rollback_whose_record_a_later_promote_writes_is_recorded_as_the_rollback(store, runs):
    assert promote(store, "a").promoted and promote(store, "b").promoted
    assert registry.rollback(FailingHistoryWrites(store), min_accuracy=MIN).history_key is None
    current, _ = registry.read_production(store)
    again = promote(store, "a", actor="someone-else")  # a's own promotion retried: production is a
    assert again.already and again.history_key == current.history_key
    last = registry.read_history(store)[-1]
    assert (last["key"], last["decision"], last["run_id"], last["production_before"]) == \
        (current.history_key, "rollback", "a", "b")
    assert last["actor"] == current.promoted_by != "someone-else" and last["reason"] == "rollback from b"


class RecordsMissingTogether:
    """The store, except that the two threads asking whether a history record exists both get
    their answer before either writes it: two retries of one promotion at the same moment."""

    def __init__(self, store):
        self._store, self._barrier = store, threading.Barrier(2)

    def __getattr__(self, name):
        return getattr(self._store, name)

    def exists(self, key):
        found = self._store.exists(key)
        if key.startswith(keys.HISTORY):
            self._barrier.wait(30)
        return found


def test_two_retries_writing_a_missing_history_record_at_once_record_the_decision_once(store, runs):
    assert promote(FailingHistoryWrites(store), "a").history_key is None
    current, _ = registry.read_production(store)
    candidate, racing, results = registry.stored_candidate(store, "a"), RecordsMissingTogether(store), {}

    def retry(name):
        results[name] = registry.promote(racing, candidate, min_accuracy=MIN)

    threads = [threading.Thread(target=retry, args=(name,)) for name in ("first", "second")]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert {r.history_key for r in results.values()} == {current.history_key}
    history = [r for r in registry.read_history(store) if r["source"] == "cli"]
    assert [(r["key"], r["run_id"], r["decision"]) for r in history] == [(current.history_key, "a", "promoted")]


def test_a_stale_etag_is_refused_and_the_loser_decides_again(store, runs, monkeypatch):
    assert promote(store, "b").promoted
    real_read = registry.read_production_raw
    raced = []

    def read_then_race(st):
        data, etag = real_read(st)
        if not raced:  # between our read and our write, another promotion lands
            raced.append(1)
            body = dict(json.loads(data), run_id="a", model_key="runs/a/model.keras",
                        model_sha256=registry.sha256(st.get("runs/a/model.keras")))
            st.put_if_match(keys.PRODUCTION, json.dumps(body).encode(), etag)
        return data, etag

    monkeypatch.setattr(registry.promotion, "read_production_raw", read_then_race)  # where promote reads it
    result = promote(store, "c", allow_regression=True)
    assert result.promoted and result.production["previous_run_id"] == "a"


def test_concurrent_promotions_leave_one_winner_and_a_truthful_history(store, runs):
    candidates = {name: registry.stored_candidate(store, name) for name in "abc"}
    results = {}

    def go(name):
        results[name] = registry.promote(store, candidates[name], min_accuracy=MIN, allow_regression=True)

    threads = [threading.Thread(target=go, args=(name,)) for name in "abc"]
    [t.start() for t in threads]
    [t.join() for t in threads]
    current, _ = registry.read_production(store)
    promoted = {name for name, r in results.items() if r.promoted}
    assert current.run_id in promoted
    history = [r for r in registry.read_history(store) if r["source"] == "cli"]
    assert sorted(r["run_id"] for r in history) == ["a", "b", "c"]
    assert_promotions_chain([r for r in history if r["decision"] == "promoted"], current.run_id)


class CollidingWrites:
    """The store, except that each thread's first replace of production waits for the other
    thread's: two promotions that read the same production reach the server at the same moment."""

    def __init__(self, store):
        self._store, self._barrier, self._waited = store, threading.Barrier(2), set()
        self.first_write = {}  # thread name -> "won" or "refused"

    def __getattr__(self, name):
        return getattr(self._store, name)

    def put_if_match(self, key, data, etag, content_type="application/json"):
        name = threading.current_thread().name
        if name in self._waited:
            return self._store.put_if_match(key, data, etag, content_type)
        self._waited.add(name)
        self._barrier.wait(30)
        try:
            etag = self._store.put_if_match(key, data, etag, content_type)
            self.first_write[name] = "won"
            return etag
        except PreconditionFailed:
            self.first_write[name] = "refused"
            raise


def test_two_promotions_racing_one_write_wins_the_other_is_told_and_decides_again(store, runs, monkeypatch):
    """Production c; a and b are promoted at the same moment. The server lets exactly one write
    through; the other promotion is refused and decides again, against the winner. A new process
    (no If-Match form learned), so on radosgw both also go through the detection of the form."""
    monkeypatch.setattr(store_module, "_if_match_form", {})
    assert promote(store, "c").promoted
    colliding = CollidingWrites(store)
    candidates = {name: registry.stored_candidate(store, name) for name in "ab"}
    results = {}

    def go(name):
        results[name] = registry.promote(colliding, candidates[name], min_accuracy=MIN)

    threads = [threading.Thread(target=go, args=(name,), name=name) for name in "ab"]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert sorted(colliding.first_write.values()) == ["refused", "won"], colliding.first_write
    winner = next(name for name, outcome in colliding.first_write.items() if outcome == "won")
    loser = "b" if winner == "a" else "a"
    assert results[winner].promoted and results[winner].production["previous_run_id"] == "c"
    assert results[loser].decision.production_run_id == winner  # judged again, against the winner
    history = [r for r in registry.read_history(store) if r["source"] == "cli"]
    current, _ = registry.read_production(store)
    assert_promotions_chain([r for r in history if r["decision"] == "promoted"], current.run_id)


class AppliedButRefused:
    """The store, except that its next conditional write of production is applied and then
    answered as refused: what a client sees when the server applied a write but answered HTTP 500,
    and the retry then failed its precondition against that very write."""

    def __init__(self, store):
        self._store, self.answered = store, 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _apply_then_refuse(self, write, *args):
        write(*args)
        self.answered += 1
        raise PreconditionFailed(f"{keys.PRODUCTION} changed since it was read")

    def put_if_match(self, key, data, etag, content_type="application/json"):
        if key != keys.PRODUCTION or self.answered:
            return self._store.put_if_match(key, data, etag, content_type)
        return self._apply_then_refuse(self._store.put_if_match, key, data, etag, content_type)

    def put_if_absent(self, key, data, content_type="application/json"):
        if key != keys.PRODUCTION or self.answered:
            return self._store.put_if_absent(key, data, content_type)
        return self._apply_then_refuse(self._store.put_if_absent, key, data, content_type)


def test_a_write_that_landed_though_its_answer_said_refused_is_reported_as_done(store, runs):
    """Neither "production changed while rolling back; nothing was changed" (a lie: it changed)
    nor a promotion reported as "already in production": the write is recognised as this attempt's."""
    from mnist_pipeline.audit import verify

    promoted = registry.promote(AppliedButRefused(store), registry.stored_candidate(store, "b"), min_accuracy=MIN)
    assert promoted.promoted and not promoted.already and promoted.production["run_id"] == "b"
    assert promote(store, "a").promoted
    rolled = AppliedButRefused(store)
    result = registry.rollback(rolled, min_accuracy=MIN)
    assert rolled.answered == 1 and result.promoted and registry.read_production(store)[0].run_id == "b"
    assert [(r["run_id"], r["decision"]) for r in registry.read_history(store)][-3:] == [
        ("b", "promoted"), ("a", "promoted"), ("b", "rollback")]
    assert verify(store).problems == []


def test_a_model_that_does_not_load_is_never_promoted(store, runs):
    candidate = registry.Candidate("bad", registry.sha256(b"not a zip"), 0.99)
    store.put("runs/bad/model.keras", b"not a zip")
    with pytest.raises(UnsafeModel):
        registry.promote(store, candidate, min_accuracy=MIN)
    assert registry.read_production(store) == (None, None)


def test_a_lambda_layer_is_refused_by_safe_mode(store, runs):
    import keras

    data = model_to_bytes(keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda x: x * 2)]))
    store.put("runs/evil/model.keras", data)
    with pytest.raises(UnsafeModel, match="arbitrary code"):
        registry.promote(store, registry.Candidate("evil", registry.sha256(data), 0.99), min_accuracy=MIN)
    assert registry.read_production(store) == (None, None)
