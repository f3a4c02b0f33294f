"""Register the training flow as a deployment with a cron schedule and serve it.
It also runs when data arrives (the `mnist.data.ingested` event of an ingest into its store), and
skips nights with nothing new (`skip_unchanged`, unless --parameters turns it off).

    PREFECT_API_URL=http://localhost:4200/api python deployments/serve.py [--cron "0 2 * * *"]

Why `flow.serve` and not a work pool: one long-lived process both registers the deployment and
executes its runs (scheduled or started from the UI's Run button), with the code and dependencies
already in its image; a work pool and worker would add a second moving part and a pull step for
the same result on a single machine. Runs execute in this process, so it needs the same
environment as the flow (MNIST_STORE_URL, AWS_*, MNIST_MIRRORS).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from flows.plumbing import prefect_api_answers
from flows.train_flow import train_flow
from mnist_pipeline.data_versions import INGESTED_EVENT
from mnist_pipeline.errors import ConfigError, PipelineError
from mnist_pipeline.params import parse_params
from mnist_pipeline.settings import load_settings
from mnist_pipeline.startup import prepare_process
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

DEPLOYMENT_NAME = "scheduled"
DEFAULT_CRON = "0 2 * * *"  # nightly, 02:00 in --timezone
TAGS = ["mnist", "training"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cron", default=os.environ.get("MNIST_CRON") or DEFAULT_CRON,
                   help=f"cron schedule (default: $MNIST_CRON, else '{DEFAULT_CRON}')")
    p.add_argument("--timezone", default=os.environ.get("MNIST_TIMEZONE") or "UTC",
                   help="the cron's time zone, e.g. Europe/Berlin (default: $MNIST_TIMEZONE, else UTC)")
    p.add_argument("--name", default=DEPLOYMENT_NAME,
                   help=f"the deployment's name: runs are mnist-training/NAME (default: {DEPLOYMENT_NAME})")
    p.add_argument("--parameters", default=os.environ.get("MNIST_DEPLOYMENT_PARAMETERS") or "{}",
                   help='the deployment\'s default run parameters as JSON, e.g. \'{"model": "cnn"}\' '
                        "(default: $MNIST_DEPLOYMENT_PARAMETERS, else the flow's own defaults)")
    return p


def deployment_parameters(text: str) -> dict:
    """The JSON given, checked by the same parameter model as the UI's form and the command line."""
    try:
        given = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--parameters / MNIST_DEPLOYMENT_PARAMETERS is not JSON: {exc}") from None
    if not isinstance(given, dict):
        raise ConfigError("--parameters / MNIST_DEPLOYMENT_PARAMETERS must be a JSON object of run parameters, "
                          "e.g. '{\"model\": \"cnn\"}'")
    parse_params(**given)
    return {"skip_unchanged": True, **given}  # a night with nothing new costs seconds


def data_arrived(store_url: str):
    """A run for each version ingested into this deployment's store (`mnist-pipeline ingest`)."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(name="mnist data ingested", expect={INGESTED_EVENT},
                                  match={"prefect.resource.id": "mnist.data.version.*", "mnist.store": store_url})


def main(argv: list[str] | None = None) -> int:
    prepare_process()
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()  # a bad environment is refused now, not at 02:00
        parameters = deployment_parameters(args.parameters)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from prefect.schedules import Cron

    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(args.timezone)
        schedule = Cron(args.cron, timezone=args.timezone)
    except (ValueError, TypeError, ZoneInfoNotFoundError) as exc:
        print(f"error: the schedule is invalid (--cron / MNIST_CRON {args.cron!r}, --timezone / MNIST_TIMEZONE "
              f"{args.timezone!r}): {exc}", file=sys.stderr)
        return 2
    try:
        prefect_api_answers()  # a server that is down or refuses the login: one line, not Prefect's tracebacks
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    train_flow.serve(
        name=args.name,
        schedule=schedule,
        triggers=[data_arrived(settings.store_url)],
        parameters=parameters,
        tags=TAGS,
        description="Nightly MNIST training; promotes only a model that passes the gate.",
        version=os.environ.get("MNIST_PIPELINE_VERSION") or None,
        # One run at a time, server-enforced: two runs never race a promotion; extra runs queue.
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        limit=1,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
