"""`python -m mnist_pipeline.prefect_server [uvicorn's options]`: what `python -m uvicorn` does,
for Prefect's temporary API server (mnist_pipeline/ephemeral_server.py), with the garbage
collector paused while the server's application imports (mnist_pipeline/collector.py: its CPU on
this project's machine 6.4-6.9 s, 5.3-5.8 s paused). The server's start is on the critical path of
every `python flows/X.py` run, and shares the machine's two cores with that run's own imports."""

import sys

from mnist_pipeline import collector

collector.pause_while_importing()

import uvicorn  # noqa: E402
from prefect.server.api import server  # noqa: E402, F401  (uvicorn's --factory finds it imported)

collector.resume_after_imports()

if __name__ == "__main__":
    sys.exit(uvicorn.main())
