"""What every flow of this project shares, so each flow file reads as its pipeline only:
the process entry (`python flows/X.py`: parameters, the temporary Prefect server, exit
statuses), the retry rule for flows, the final states, and what happens when a run fails.

Exit statuses (DESIGN.md): 0 = stored and promoted; 3 = stored, promotion blocked by the gate,
production unchanged; 2 = bad parameters or settings; 1 = the run failed, production unchanged.
"""

import logging
import sys
import threading
from contextlib import contextmanager

from prefect.context import FlowRunContext
from prefect.states import Completed, State
from pydantic import BaseModel

from mnist_pipeline import collector, notify, startup
from mnist_pipeline.ephemeral_server import ephemeral_server
from mnist_pipeline.errors import ConfigError, PipelineError, is_expected, is_transient
from mnist_pipeline.params import command_line, parse_params
from mnist_pipeline.settings import load_settings

EXIT_PROMOTED, EXIT_FAILED, EXIT_USAGE, EXIT_BLOCKED = 0, 1, 2, 3


# -- logs: one line for a failure the pipeline foresaw -------------------------------------------
class _ExpectedErrorsWithoutTraceback(logging.Filter):
    """Prefect logs a failing task or flow with its traceback. For our own one-line errors (bad
    data, an unusable store, a dead endpoint, a damaged registry) the line says it all;
    unexpected errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_expected(exc):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_tracebacks() -> None:
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ExpectedErrorsWithoutTraceback) for f in logger.filters):
            logger.addFilter(_ExpectedErrorsWithoutTraceback())


def route_package_logs() -> None:
    """This package's log records (the store's retry warnings, notifications) go where Prefect's
    own do: the run's log in the UI. What PREFECT_LOGGING_EXTRA_LOGGERS does, but in whatever
    process runs the flow (a served deployment, a worker's subprocess), not only where that
    variable was set before Prefect was imported."""
    logger = logging.getLogger("mnist_pipeline")
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in logger.handlers:
            logger.addHandler(handler)


def prepare_run() -> None:
    """First thing in a flow's body, wherever it runs: idempotent."""
    startup.prepare_tensorflow()
    quiet_expected_tracebacks()
    route_package_logs()


# -- retries and final states ---------------------------------------------------------------------
def stop_flow_retries() -> None:
    """Prefect 3 flows have no retry condition (the server retries any failure): for a failure
    that would happen again, switch this run's retries off before it fails."""
    from prefect.client.orchestration import get_client

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    policy = ctx.flow_run.empirical_policy
    policy.retries = 0
    with get_client(sync_client=True) as client:
        client.update_flow_run(ctx.flow_run.id, empirical_policy=policy)


@contextmanager
def retried_only_if_transient():
    """The flow retries what `errors.is_transient` calls transient, nothing else."""
    try:
        yield
    except Exception as exc:
        if not is_transient(exc):
            stop_flow_retries()
        raise


def decided(promoted: bool, reason: str, summary: dict) -> State:
    """A decided run is Completed, named for its decision, the reason as its message: a blocked
    run is a verdict, not a failure to retry, and the UI's run list tells them apart."""
    return Completed(name="Promoted" if promoted else "Blocked", message=reason, data=summary)


def current_run_id() -> str:
    return str(FlowRunContext.get().flow_run.id)


def on_run_failed(flow, flow_run, state) -> None:
    """Flow hook for a run that ended Failed (after its retries): the event and the alert."""
    message = (state.message or "unknown error").removeprefix("Flow run encountered an exception: ")
    outcome = notify.Outcome(str(flow_run.id), "failed", message)
    log = logging.getLogger("mnist_pipeline.notify")
    try:  # a run that failed on bad settings still gets its event: they are read apart
        settings = load_settings()
    except Exception as exc:
        settings = None
        log.warning("could not read the settings to report the failure: %s", exc)
    try:
        from tasks.publish import emit_outcome_event

        emit_outcome_event(outcome, settings.store_url if settings else None, flow=flow.name)
        if settings:
            notify.send(settings, outcome)
    except Exception as exc:  # never let reporting a failure raise another one
        log.warning("could not report the failure: %s", exc)


# -- the process entry ------------------------------------------------------------------------------
def _load_tensorflow() -> None:
    try:
        import keras  # noqa: F401
    except Exception:  # the train task's own import will report it
        pass
    finally:
        collector.resume_after_imports()  # the last big import of a `python flows/X.py` process


@contextmanager
def tensorflow_imported_in_background():
    """TensorFlow takes seconds to import; do it while Prefect's server starts (a separate
    process), instead of after. The train task's own import then finds it loaded.
    The import is always waited for on the way out, even after an early error: Python shutting
    down while a thread is inside TensorFlow's C++ start-up aborted the process (SIGABRT,
    "terminate called without an active exception") instead of exiting with our status."""
    loader = threading.Thread(target=_load_tensorflow, name="import-tensorflow", daemon=True)
    loader.start()
    try:
        yield
    finally:
        loader.join()


def exit_status(state: State) -> int:
    """Print the run's one-line outcome; the exit status that says it."""
    if state.is_completed():
        summary = state.result()
        verdict = "promoted to production" if summary["promoted"] else summary["reason"]
        print(f"run {summary['run_id']}: test accuracy {summary['test_accuracy']:.4f}; {verdict}; "
              f"report: {summary['report']}")
        for warning in summary.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
        return EXIT_PROMOTED if summary["promoted"] else EXIT_BLOCKED
    exc = state.result(raise_on_failure=False)
    detail = str(exc) if isinstance(exc, PipelineError) else (state.message or "unknown error")
    print(f"error: run failed: {detail}", file=sys.stderr)
    return EXIT_FAILED


def refuse_approval_without_a_lasting_server(params: dict) -> None:
    """A run that waits for a person needs a Prefect server that is still there when they answer:
    the temporary one of `python flows/X.py` ends with the run."""
    from prefect.settings import PREFECT_API_URL

    if params.get("require_approval") and not PREFECT_API_URL.value():
        raise ConfigError("require_approval needs a Prefect server that outlives the run, where a person can "
                          "approve it: run it from a deployment (deployments/serve.py, prefect.yaml) or set "
                          "PREFECT_API_URL to a running server")


def main(flow, schema: type[BaseModel], argv: list[str] | None = None) -> int:
    """`python flows/X.py [options]`: run `flow` once with a temporary Prefect server (unless
    PREFECT_API_URL is set), print one line, exit with the run's status. The options are
    `schema`'s fields (mnist_pipeline/params.py)."""
    startup.prepare_tensorflow()
    parser = command_line(schema, flow.description, "Exit status: 0 promoted, 3 blocked by the gate, "
                                                    "2 bad parameters, 1 the run failed.")
    args = vars(parser.parse_args(argv))
    try:
        load_settings()  # fail before any work on a bad environment
        params = parse_params(schema, **args).model_dump()
        refuse_approval_without_a_lasting_server(params)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with ephemeral_server() as server, tensorflow_imported_in_background():
        try:
            if server:
                server.wait_ready()
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        state = flow(**params, return_state=True)
    return exit_status(state)
