"""`python -m mnist_pipeline.prefect_server [uvicorn's options]`: what `python -m uvicorn` does,
for Prefect's temporary API server (mnist_pipeline/ephemeral_server.py), with the garbage
collector paused while the server's application imports (mnist_pipeline/collector.py). The
server's start is on the critical path of every `python flows/X.py` run, and shares the machine's
cores with that run's own imports."""

import sys


def main() -> int:
    from mnist_pipeline import collector

    collector.pause_while_importing()
    import uvicorn
    from prefect.server.api import server  # noqa: F401  (uvicorn's --factory finds it imported)

    collector.resume_after_imports()
    return uvicorn.main()


if __name__ == "__main__":
    sys.exit(main())
