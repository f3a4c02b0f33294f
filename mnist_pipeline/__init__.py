"""mnist-pipeline's lower layer: settings, the store and its key layout, the dataset format, the
model, the registry, the run index, retention, the audit, notifications and the CLI. It never
imports `tasks` or `flows`, and importing it changes nothing in the interpreter: processes
prepare themselves with explicit calls (mnist_pipeline/startup.py)."""
