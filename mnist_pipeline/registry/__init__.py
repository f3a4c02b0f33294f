"""The model registry: `registry/production.json`, its rollback stack, and the history of decisions.

What promotion trusts (docs/registry.md): a model's bytes, checked against the SHA-256 recorded when
they were stored, and an accuracy measured on those bytes, never read from a file; so editing
metrics.json (or a manifest) promotes nothing.

- schema: what production.json and a history record hold, validated strictly
- gate: the promotion rule and its explanation
- verification: reading what the registry trusts, and checking it
- history: the decision records, which are also the run index
- promotion: the promote and rollback transactions
"""

from mnist_pipeline.registry.gate import BLOCKED, Check, GateDecision, gate
from mnist_pipeline.registry.history import (default_actor, history_key_run_id, history_key_time, history_keys,
                                             history_keys_newest_first, newest_history_keys, read_history,
                                             read_history_record, write_history)
from mnist_pipeline.registry.promotion import PromotionResult, decline, promote, rollback
from mnist_pipeline.registry.schema import (ROLLBACK_DEPTH, VERIFY_HINT, HistoryRecord, Production, StackEntry,
                                            parse_history_record, parse_production)
from mnist_pipeline.registry.verification import (Candidate, check_production_model, collected, collected_files,
                                                  measure_on_test_set, read_manifest, read_production,
                                                  read_production_raw, sha256, stored_candidate, verified_bytes)

__all__ = ["BLOCKED", "Candidate", "Check", "GateDecision", "HistoryRecord", "Production", "PromotionResult", "ROLLBACK_DEPTH",
           "StackEntry", "VERIFY_HINT", "check_production_model", "collected", "collected_files", "decline",
           "default_actor",
           "gate", "history_key_run_id", "history_key_time", "history_keys", "history_keys_newest_first",
           "measure_on_test_set", "newest_history_keys", "parse_history_record", "parse_production", "promote",
           "read_history", "read_history_record", "read_manifest", "read_production", "read_production_raw",
           "rollback", "sha256", "stored_candidate", "verified_bytes", "write_history"]
