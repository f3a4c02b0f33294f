"""What every flow of this project shares, so each flow file reads as its pipeline only:
the process entry (`python flows/X.py`: parameters, the temporary Prefect server, exit
statuses), the retry rule for flows, the final states, and what happens when a run fails or is
stopped (SIGINT, SIGTERM, its temporary Prefect server lost).

Exit statuses (DESIGN.md): 0 = stored and promoted; 3 = stored, promotion blocked by the gate,
production unchanged; 2 = bad parameters or settings; 1 = the run failed, production unchanged;
130/143 = stopped by SIGINT/SIGTERM, production unchanged.
"""

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from functools import partial

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import TerminationSignal
from prefect.states import Cancelled, Completed, State
from pydantic import BaseModel

from mnist_pipeline import collector, late_runs, notify, startup
from mnist_pipeline.ephemeral_server import ephemeral_server
from mnist_pipeline.errors import ConfigError, PipelineError, is_expected, is_transient, raising_redacted
from mnist_pipeline.params import command_line, parse_params
from mnist_pipeline.redaction import redact
from mnist_pipeline.settings import load_settings

EXIT_PROMOTED, EXIT_FAILED, EXIT_USAGE, EXIT_BLOCKED = 0, 1, 2, 3
EXIT_UNCHANGED = EXIT_PROMOTED  # production is already the model of these inputs


# -- logs: one line for a failure the pipeline foresaw -------------------------------------------
class _ExpectedErrorsWithoutTraceback(logging.Filter):
    """Prefect logs a failing task or flow with its traceback. For our own one-line errors (bad
    data, an unusable store, a dead endpoint, a damaged registry) and for a stopped run the line
    says it all; unexpected errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and (is_expected(exc) or isinstance(exc, (KeyboardInterrupt, TerminationSignal))):
            record.exc_info, record.exc_text = None, None
        return True


class _InformationWithoutTraceback(logging.Filter):
    """Dask's scheduler logs a connection that closed while a cluster shuts down as information,
    with the traceback of the closing write (distributed/batched.py): seen after a SIGTERM during a
    search. Below a warning, the line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            record.exc_info, record.exc_text = None, None
        return True


class _LostConnectionInOneLine(logging.Filter):
    """Dask's client logs each failed reconnection to a lost scheduler as an error with an empty
    message and the connection's traceback (distributed/client.py): one line naming the error
    instead; the search then fails in one line of its own (tasks/search.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        chain = []  # the error and what caused it: a reconnection cut short ends in CancelledError
        while exc is not None and exc not in chain:
            chain.append(exc)
            exc = exc.__cause__ or exc.__context__
        lost = next((e for e in chain if isinstance(e, OSError)), None)  # Dask's CommClosedError is one
        if lost is not None:
            said = record.getMessage().strip()
            record.msg, record.args = f"{said + ': ' if said else ''}{type(lost).__name__}: {lost}", ()
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_tracebacks() -> None:
    for name, quiet in (("prefect.flow_runs", _ExpectedErrorsWithoutTraceback),
                        ("prefect.task_runs", _ExpectedErrorsWithoutTraceback),
                        ("prefect.engine", _ExpectedErrorsWithoutTraceback),
                        ("distributed.batched", _InformationWithoutTraceback),
                        ("distributed.client", _LostConnectionInOneLine)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, quiet) for f in logger.filters):
            logger.addFilter(quiet())


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
    """First thing in a flow's body, wherever it runs (idempotent): the process prepared, one
    line for a foreseen failure, this package's logs in the run's log, and every record
    redacted (Prefect's too: its console, its API's log table, ours)."""
    startup.prepare_process()  # the redaction of every record first
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
    """The flow retries what `errors.is_transient` calls transient, nothing else. Any URL in the
    message of an unforeseen exception is redacted first: Prefect keeps it as the run's state."""
    try:
        with raising_redacted():
            yield
    except Exception as exc:
        if not is_transient(exc):
            stop_flow_retries()
        raise


def decided(promoted: bool, reason: str, summary: dict, name: str | None = None) -> State:
    """A decided run is Completed, named for its decision, the reason as its message: a blocked
    run is a verdict, not a failure to retry, and the UI's run list tells them apart."""
    return Completed(name=name or ("Promoted" if promoted else "Blocked"), message=reason, data=summary)


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


def unchanged(run_id: str, production_run_id: str) -> State:
    """`skip_unchanged`: this run's inputs are production's run's, so it would learn the same
    model. It ends now, Completed as Unchanged, having stored nothing and decided nothing."""
    reason = (f"the dataset versions, code and parameters are those of production's run {production_run_id}; "
              "nothing was trained or stored")
    get_run_logger().info("unchanged: %s", reason)
    return decided(False, reason, {"run_id": run_id, "promoted": False, "unchanged": True, "reason": reason,
                                   "production_run_id": production_run_id}, name="Unchanged")


def superseded() -> State | None:
    """A scheduled deployment run for which a newer run of the same deployment is already due (its
    process was down across several scheduled times): Cancelled, naming that run, so that only the
    newest trains (mnist_pipeline/late_runs.py). None otherwise, or when the API cannot tell."""
    from prefect.client.orchestration import get_client

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None or not ctx.flow_run.auto_scheduled:
        return None
    try:
        with get_client(sync_client=True) as client:
            newer = late_runs.newer_due_run(client, ctx.flow_run)
    except Exception as exc:  # not knowing is no reason to skip a night
        get_run_logger().warning("could not ask for newer scheduled runs: %s", exc)
        return None
    return Cancelled(message=late_runs.superseded_message(newer)) if newer else None


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


# -- a run stopped: a signal, or its temporary Prefect server lost -------------------------------------
class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread. A KeyboardInterrupt, as Prefect expects of an
    interruption: it records the run as Crashed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# What stopped the run: the signal received, and whether its one line was printed (by the main
# thread or the server's watch, whichever came first).
_ending: dict = {"signal": None, "printed": threading.Lock()}


def _signal_of(exc: BaseException) -> int:
    return getattr(exc, "signum", None) or getattr(exc, "signal", None) or signal.SIGINT


@contextmanager
def stop_signals_raise():
    """SIGINT and SIGTERM raise Interrupted (by default SIGINT printed a 90-line traceback, and
    SIGTERM ended the process at once, leaving its temporary server running; during a flow,
    Prefect raises its TerminationSignal). Once: a second signal is ignored while the run unwinds
    (seconds: the server is stopped, logs are sent). An interruption raised where Python
    swallows exceptions (a garbage-collector callback of Dask's: the run went on to its end) is
    delivered again."""
    state = {"raised": False, "again": False}

    def handler(signum, frame):
        _ending["signal"] = _ending["signal"] or signum
        if not state["raised"] or state["again"]:
            state["raised"], state["again"] = True, False
            raise Interrupted(signum)

    def unraisable(info) -> None:
        if isinstance(info.exc_value, (KeyboardInterrupt, TerminationSignal)):
            # From a thread, a moment later: a handler run here, or still inside the callback
            # that swallowed it, would be swallowed again.
            state["again"] = True
            threading.Timer(0.01, os.kill, (os.getpid(), _signal_of(info.exc_value))).start()
        else:
            previous_hook(info)

    previous_hook = sys.unraisablehook
    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals are someone else's business
        previous = {}
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for s, h in previous.items():
            signal.signal(s, h)


def _production_names(run_id: str) -> bool | None:
    """Whether production names `run_id` (None: the store could not say)."""
    from mnist_pipeline import registry
    from mnist_pipeline.store import open_store

    try:
        production, _ = registry.read_production(open_store(load_settings()))
    except Exception:
        return None
    return production is not None and production.run_id == run_id


def stopped(what: str, status: int) -> int:
    """The one line of a run stopped before its end (printed once); the exit status that says
    it. Before its promotion began, production is unchanged; after, what production names
    decides: a promoted run exits 0 whatever stopped it after its decisive write."""
    from tasks.gate import promotions_begun

    if not _ending["printed"].acquire(blocking=False):
        return status
    run_id = promotions_begun[-1] if promotions_begun else None
    names = _production_names(run_id) if run_id else False
    if names:
        say(f"run {run_id}: promoted to production; then {what} before the run's end (its report links, "
            "event or notification may be missing)")
        return EXIT_PROMOTED
    production = "production unchanged" if names is False else \
        "whether production changed is unknown: check it with `mnist-pipeline runs`"
    say(f"error: {what}; {production}", sys.stderr)
    return status


def _server_lost(server, why: str) -> None:
    """The temporary server is gone: every API call the run makes would now be retried for a
    minute, and nothing can be recorded. End the process from here, once production is settled
    (a promotion being written is waited for)."""
    from tasks.gate import PROMOTING

    server.process.kill()  # one that hangs, too
    with PROMOTING:
        _stop_child_processes()
        signum = _ending["signal"]  # a signal to the whole process group stops the server too
        status = stopped(f"interrupted by {signal.Signals(signum).name}", 128 + signum) if signum else \
            stopped(f"run failed: the Prefect server stopped answering ({why})", EXIT_FAILED)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _stop_child_processes() -> None:
    """Close the LocalClusters of this process as Dask does at a normal exit (their workers are
    stopped, not restarted by their nannies), before the process ends without one."""
    spec = sys.modules.get("distributed.deploy.spec")
    if spec is not None:
        spec.close_clusters()


def say(line: str, stream=None) -> None:
    """Print one line of the run's outcome. A stream that cannot take it (a closed pipe, a full
    disk) loses the line, never the exit status: it is pointed at /dev/null, so that Python's own
    flush at exit does not fail too (status 120 and a traceback)."""
    stream = stream or sys.stdout
    try:
        print(line, file=stream, flush=True)
    except OSError as exc:
        try:
            fd = stream.fileno()
        except (OSError, ValueError):  # a stream without a file descriptor has nothing left to flush
            fd = None
        if fd is not None:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        if stream is sys.stdout:
            say(f"warning: the result line could not be printed ({exc.strerror or exc}); the exit status "
                "says the outcome", sys.stderr)


def exit_status(state: State) -> int:
    """Print the run's one-line outcome; the exit status that says it."""
    if state.is_completed():
        summary = state.result()
        if summary.get("unchanged"):
            say(f"run {summary['run_id']}: unchanged: {summary['reason']}")
            return EXIT_UNCHANGED
        verdict = "promoted to production" if summary["promoted"] else summary["reason"]
        say(f"run {summary['run_id']}: test accuracy {summary['test_accuracy']:.4f}; {verdict}; "
            f"report: {summary['report']}")
        for warning in summary.get("warnings", []):
            say(f"warning: {redact(warning)}", sys.stderr)
        return EXIT_PROMOTED if summary["promoted"] else EXIT_BLOCKED
    exc = state.result(raise_on_failure=False)
    detail = str(exc) if isinstance(exc, PipelineError) else (state.message or "unknown error")
    say(f"error: run failed: {' '.join(redact(detail).split())}", sys.stderr)  # one line, whatever Prefect says
    return EXIT_FAILED


def refuse_approval_without_a_lasting_server(params: dict) -> None:
    """A run that waits for a person needs a Prefect server that is still there when they answer:
    the temporary one of `python flows/X.py` ends with the run."""
    from prefect.settings import PREFECT_API_URL

    if params.get("require_approval") and not PREFECT_API_URL.value():
        raise ConfigError("require_approval needs a Prefect server that outlives the run, where a person can "
                          "approve it: run it from a deployment (deployments/serve.py, prefect.yaml) or set "
                          "PREFECT_API_URL to a running server")


def prefect_api_answers() -> None:
    """With PREFECT_API_URL set, the run's first call goes to that server, and Prefect's client
    retries one that is down or hung for minutes before raising through the flow (three chained
    tracebacks, 419 s for a hung one). One request first, bounded by PREFECT_API_REQUEST_TIMEOUT:
    Prefect's own server version check (`/admin/version`, which needs the login; Prefect Cloud is
    skipped, as Prefect skips it), with the headers and certificates Prefect's client uses."""
    import base64
    import ssl

    import certifi
    import httpx
    from prefect.settings import (PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_REQUEST_TIMEOUT,
                                  PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY, PREFECT_API_URL,
                                  PREFECT_CLOUD_API_URL, get_current_settings)

    api = PREFECT_API_URL.value()
    if not api or api.startswith(str(PREFECT_CLOUD_API_URL.value())):
        return
    # As prefect/_internal/version_checking.py builds them.
    headers, timeout = dict(get_current_settings().client.custom_headers), PREFECT_API_REQUEST_TIMEOUT.value()
    if auth := PREFECT_API_AUTH_STRING.value():
        secret = auth.get_secret_value() if hasattr(auth, "get_secret_value") else auth
        headers["Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
    elif (key := PREFECT_API_KEY.value()) and "Authorization" not in headers:
        headers["Authorization"] = f"Bearer {key.get_secret_value() if hasattr(key, 'get_secret_value') else key}"
    verify = False if PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value() else \
        ssl.create_default_context(cafile=PREFECT_API_SSL_CERT_FILE.value() or certifi.where())
    where = f"the Prefect API at {redact(api)}"
    try:
        answer = httpx.get(f"{api.rstrip('/')}/admin/version", headers=headers, timeout=timeout, verify=verify)
    except httpx.TimeoutException:
        raise PipelineError(f"{where} did not answer within {timeout:g} s (PREFECT_API_REQUEST_TIMEOUT); start "
                            "it, or unset PREFECT_API_URL for a temporary server") from None
    except httpx.HTTPError as exc:
        raise PipelineError(f"{where} cannot be reached ({type(exc).__name__}: {exc}); start it, or unset "
                            "PREFECT_API_URL for a temporary server") from None
    if answer.status_code in (401, 403):
        raise PipelineError(f"{where} refused the login (HTTP {answer.status_code}); check PREFECT_API_AUTH_STRING "
                            "or PREFECT_API_KEY")
    if answer.status_code >= 400:
        raise PipelineError(f"{where} answered HTTP {answer.status_code} for its version; is it a Prefect "
                            "server's API (.../api)?")


def main(flow, schema: type[BaseModel], argv: list[str] | None = None) -> int:
    """`python flows/X.py [options]`: run `flow` once with a temporary Prefect server (unless
    PREFECT_API_URL is set), print one line, exit with the run's status. The options are
    `schema`'s fields (mnist_pipeline/params.py)."""
    prepare_run()
    parser = command_line(schema, flow.description, "Exit status: 0 promoted (or unchanged), 3 blocked by "
                                                    "the gate, 2 bad parameters or settings, 1 the run failed, "
                                                    "130/143 stopped.")
    args = vars(parser.parse_args(argv))
    try:
        load_settings()  # fail before any work on a bad environment
        params = parse_params(schema, **args).model_dump()
        refuse_approval_without_a_lasting_server(params)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from tasks.gate import promotions_begun

    promotions_begun.clear()
    _ending.update(signal=None, printed=threading.Lock())
    try:
        with stop_signals_raise(), ephemeral_server() as server, tensorflow_imported_in_background():
            try:
                if server:
                    server.wait_ready()
            except RuntimeError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_FAILED
            if server:
                server.watch(partial(_server_lost, server))
            else:
                prefect_api_answers()
            state = flow(**params, return_state=True)
    except (KeyboardInterrupt, TerminationSignal) as exc:
        signum = _signal_of(exc)
        return stopped(f"interrupted by {signal.Signals(signum).name}", 128 + signum)
    except PipelineError as exc:  # the Prefect API, before any work
        return stopped(f"run failed: {exc}", EXIT_FAILED)
    except Exception as exc:  # Prefect's client gave up on its API mid-run: there is no state to read
        if os.environ.get("MNIST_DEBUG"):
            raise
        return stopped(f"run failed: {redact(f'{type(exc).__name__}: {exc}')} (MNIST_DEBUG=1 shows where)",
                       EXIT_FAILED)
    return exit_status(state)
