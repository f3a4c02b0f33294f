"""docker-compose.yml, checked without a Docker engine (none runs here).

- Statically: the services the worker needs, wiring by environment that matches the settings, no
  secret written in the file, ports published on 127.0.0.1 unless MNIST_BIND_ADDRESS opens them.
- By a Compose-spec parser (the `compose-spec` package) after interpolating the variables the
  way Compose does (`${VAR:?message}` refuses to start when VAR is unset or empty).
- For real where it can run here: create-bucket's script under /bin/sh with a stand-in `mc`
  that records its calls; the MinIO policy it renders, enforced by moto's IAM (moto stands in
  for MinIO); Prefect's login and health endpoint on a real `prefect server start`, on a real
  PostgreSQL (the session's cluster) reached with the compose file's database URL; the postgres
  service's healthcheck command against that cluster.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError

from mnist_pipeline.settings import Settings
from tests.conftest import PG_BIN, REPO, MotoServer, free_port

RAW = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = RAW["services"]
# ${VAR...} as Compose reads it; `$${...}` is an escaped literal for the container's shell.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")
POLICY_TEMPLATE = REPO / "deployments" / "minio-policy.json"

# The variables compose refuses to start without, and dummy values for them.
REQUIRED = {
    "MINIO_ROOT_USER": "dummy-root",
    "MINIO_ROOT_PASSWORD": "dummy-root-password",
    "AWS_ACCESS_KEY_ID": "dummy-pipeline",
    "AWS_SECRET_ACCESS_KEY": "dummy-pipeline-secret",
    "PREFECT_AUTH_STRING": "dummy:dummy-prefect-password",
    "POSTGRES_PASSWORD": "dummyPostgresPassword",
}
# DESIGN.md's configuration table: variables the worker passes on that other branches add to
# Settings (MNIST_CRON and MNIST_TIMEZONE are deployments/serve.py's).
DESIGN_VARIABLES = {"MNIST_S3_PUBLIC_URL", "MNIST_NOTIFY_URL", "MNIST_NOTIFY_ON", "MNIST_KEEP_LAST",
                    "MNIST_DASK_ADDRESS", "MNIST_CRON", "MNIST_TIMEZONE"}


# -- Compose's variable interpolation ------------------------------------------------------------
class MissingVariable(ValueError):
    """A `${VAR:?message}` whose VAR is unset or empty: `docker compose` refuses to start."""


_TOKEN = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's rules: `$$` is a literal `$`; `${V:-d}` d when V unset or empty, `${V-d}` when
    unset; `${V:?m}` fails when unset or empty, `${V?m}` when unset; `${V}`/`$V` empty when unset."""

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        braced = _BRACED.fullmatch(match["braced"])
        assert braced, f"not a Compose variable: ${{{match['braced']}}}"
        name, op, arg = braced["name"], braced["op"] or "", braced["arg"]
        value = env.get(name)
        is_set = value is not None and (value != "" or not op.startswith(":"))
        if op.endswith("-"):
            return value if is_set else arg
        if op.endswith("?"):
            if not is_set:
                raise MissingVariable(f"required variable {name} is missing a value: {arg}")
            return value
        if op.endswith("+"):
            return arg if is_set else ""
        return value or ""

    return _TOKEN.sub(substitute, text)


def render(env: Mapping[str, str]) -> dict:
    """The compose file as `docker compose` would run it with this environment (.env + shell)."""

    def walk(node):
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return interpolate(node, env) if isinstance(node, str) else node

    return walk(RAW)


def read_dotenv(text: str) -> dict[str, str]:
    """The NAME=value lines of a .env file; quotes stripped (single quotes: literal)."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def env_example_filled_in() -> dict[str, str]:
    """.env.example as a user fills it in: the empty required values set."""
    values = read_dotenv((REPO / ".env.example").read_text())
    return {**values, **{name: REQUIRED[name] for name, value in values.items() if name in REQUIRED and not value}}


def setting_env_names() -> set[str]:
    names = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        names |= {alias} if isinstance(alias, str) else set(alias.choices)
    return names


def variable_of(value: str) -> str:
    """The one .env variable a compose value is read from."""
    names = INTERPOLATION.findall(value)
    assert len(names) == 1, f"{value!r} should read exactly one variable"
    return names[0]


def published_host_ips(compose: dict) -> dict[str, str]:
    """'service:container port' -> the host address it is published on ('' = all addresses)."""
    ips = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            parts = str(port).split(":")
            ips[f"{name}:{parts[-1]}"] = parts[0] if len(parts) == 3 else ""
    return ips


# -- the stack's shape ---------------------------------------------------------------------------
def test_the_stack_has_storage_bucket_server_database_and_worker():
    assert {"minio", "create-bucket", "postgres", "prefect-server", "worker"} <= set(SERVICES)
    assert SERVICES["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker = SERVICES["worker"]
    assert worker["build"] == "." and (REPO / "Dockerfile").is_file()
    assert worker["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert SERVICES["create-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "deployments/serve.py" in " ".join(worker["command"])


def test_minio_and_mc_are_pinned_minio_persistent_and_health_checked():
    minio = SERVICES["minio"]
    for service in ("minio", "create-bucket"):
        assert re.search(r":RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ$", SERVICES[service]["image"]), \
            f"pin the {service} image to a release"
    assert any(v.startswith("minio-data:") for v in minio["volumes"]) and "minio-data" in RAW["volumes"]
    assert minio["healthcheck"]["test"]
    ips = published_host_ips(render(REQUIRED))
    assert {"minio:9000", "minio:9001"} <= set(ips)


def test_prefect_server_ui_port_and_database_volume():
    server = SERVICES["prefect-server"]
    assert "prefect-server:4200" in published_host_ips(render(REQUIRED))
    home = server["environment"]["PREFECT_HOME"]
    assert any(v == f"prefect-data:{home}" for v in server["volumes"]) and "prefect-data" in RAW["volumes"]
    assert server["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_postgres_is_pinned_persistent_health_checked_and_not_published():
    postgres = SERVICES["postgres"]
    assert re.fullmatch(r"postgres:15\.\d+-alpine[\d.]*", postgres["image"]), "pin postgres to a 15.x release"
    assert "ports" not in postgres and "expose" not in postgres  # only prefect-server reaches it
    assert postgres["volumes"] == ["postgres-data:/var/lib/postgresql/data"] and "postgres-data" in RAW["volumes"]
    kind, command = postgres["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and command.startswith("pg_isready ")


def test_prefect_server_reaches_postgres_with_the_credentials_from_env():
    """One set of variables for the database and its client; the password required, never a default."""
    postgres = SERVICES["postgres"]["environment"]
    url = SERVICES["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        assert variable_of(postgres[name]) == name and f"${{{name}:" in url
    assert "POSTGRES_PASSWORD:?" in postgres["POSTGRES_PASSWORD"] and "POSTGRES_PASSWORD:?" in url
    chosen = {**REQUIRED, "POSTGRES_USER": "team", "POSTGRES_PASSWORD": "s3cretHex0", "POSTGRES_DB": "orchestration"}
    assert render(chosen)["services"]["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"] == \
        "postgresql+asyncpg://team:s3cretHex0@postgres:5432/orchestration"
    rendered = render(REQUIRED)["services"]
    assert rendered["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"] == \
        f"postgresql+asyncpg://prefect:{REQUIRED['POSTGRES_PASSWORD']}@postgres:5432/prefect"
    assert {rendered["postgres"]["environment"][name] for name in ("POSTGRES_USER", "POSTGRES_DB")} == {"prefect"}


def test_ports_are_published_on_localhost_unless_opened_in_env():
    by_default = published_host_ips(render(REQUIRED))
    assert by_default == {"minio:9000": "127.0.0.1", "minio:9001": "127.0.0.1",
                          "prefect-server:4200": "127.0.0.1"}
    opened = published_host_ips(render({**REQUIRED, "MNIST_BIND_ADDRESS": "0.0.0.0"}))
    assert set(opened.values()) == {"0.0.0.0"}
    # one variable opens them all: no port is published without it
    for service in SERVICES.values():
        for port in service.get("ports", []):
            assert port.startswith("${MNIST_BIND_ADDRESS:-127.0.0.1}:"), port


def test_worker_environment_matches_the_settings_and_the_services():
    env = SERVICES["worker"]["environment"]
    ours = {k for k in env if k.startswith(("MNIST_", "AWS_"))}
    known = setting_env_names() | DESIGN_VARIABLES
    assert ours <= known, f"unknown variables: {ours - known}"
    assert {"MNIST_STORE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "MNIST_S3_PUBLIC_URL", "MNIST_NOTIFY_URL", "MNIST_NOTIFY_ON", "MNIST_KEEP_LAST"} <= ours
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert env["MNIST_STORE_URL"].startswith("s3://")
    bucket_default = SERVICES["create-bucket"]["environment"]["MNIST_BUCKET"]
    assert bucket_default in env["MNIST_STORE_URL"]  # the bucket created is the bucket used


def test_the_pipeline_uses_its_own_minio_user_not_the_root_account():
    worker = SERVICES["worker"]["environment"]
    minio = SERVICES["minio"]["environment"]
    setup = SERVICES["create-bucket"]["environment"]
    assert variable_of(minio["MINIO_ROOT_USER"]) == "MINIO_ROOT_USER"
    assert variable_of(minio["MINIO_ROOT_PASSWORD"]) == "MINIO_ROOT_PASSWORD"
    assert variable_of(worker["AWS_ACCESS_KEY_ID"]) == "AWS_ACCESS_KEY_ID"
    assert variable_of(worker["AWS_SECRET_ACCESS_KEY"]) == "AWS_SECRET_ACCESS_KEY"
    assert not any("MINIO_ROOT" in str(value) for value in worker.values()), "the worker must not get root"
    # create-bucket gets both pairs, from the same variables: root to administer, the user to create
    for name in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert variable_of(setup[name]) == name
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert variable_of(setup[name]) == variable_of(worker[name])


def test_worker_gets_the_public_s3_url_and_optional_settings_from_env():
    defaults = render(REQUIRED)["services"]["worker"]["environment"]
    assert defaults["MNIST_S3_PUBLIC_URL"] == "http://localhost:9000"
    assert defaults["MNIST_NOTIFY_URL"] == defaults["MNIST_NOTIFY_ON"] == defaults["MNIST_KEEP_LAST"] == ""
    chosen = {"MNIST_S3_PUBLIC_URL": "http://ml-box.example:9000", "MNIST_NOTIFY_URL": "json://127.0.0.1:9/",
              "MNIST_NOTIFY_ON": "all", "MNIST_KEEP_LAST": "20"}
    env = render({**REQUIRED, **chosen})["services"]["worker"]["environment"]
    assert {name: env[name] for name in chosen} == chosen


def test_prefect_login_is_one_required_variable_for_server_and_worker():
    server = SERVICES["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    worker = SERVICES["worker"]["environment"]["PREFECT_API_AUTH_STRING"]
    assert variable_of(server) == variable_of(worker) == "PREFECT_AUTH_STRING"
    assert "PREFECT_AUTH_STRING:?" in server and "PREFECT_AUTH_STRING:?" in worker
    rendered = render(REQUIRED)["services"]
    assert rendered["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == REQUIRED["PREFECT_AUTH_STRING"]
    assert rendered["worker"]["environment"]["PREFECT_API_AUTH_STRING"] == REQUIRED["PREFECT_AUTH_STRING"]


@pytest.mark.parametrize("name", sorted(REQUIRED))
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_compose_refuses_to_start_without_each_credential(name, how):
    env = {k: v for k, v in REQUIRED.items() if k != name}
    if how == "empty":
        env[name] = ""
    with pytest.raises(MissingVariable, match=name):
        render(env)


def _secret_like(name: str) -> bool:
    return bool(re.search(r"PASSWORD|SECRET|KEY_ID|TOKEN|ROOT_USER|MC_HOST|AUTH", name))


def test_no_secret_is_written_in_the_compose_file():
    text = (REPO / "docker-compose.yml").read_text()
    assert "minioadmin" not in text.lower()
    checked = 0
    for service in SERVICES.values():
        for name, value in (service.get("environment") or {}).items():
            if _secret_like(name):
                refs = INTERPOLATION.findall(str(value))
                literal = INTERPOLATION.sub("", str(value))
                assert refs, f"{name} must come from .env"
                assert not re.search(r"\$\{[A-Z_]+:-", str(value)), f"{name} must have no default"
                assert not re.search(r"[A-Za-z0-9]{6,}", literal.replace("http", "").replace("minio", "")), \
                    f"{name} holds a literal: {value!r}"
                checked += 1
    assert checked >= 11  # root pair twice, pipeline pair twice, the Prefect login twice, postgres's password


def test_every_variable_the_compose_file_reads_is_in_env_example():
    used = set(INTERPOLATION.findall((REPO / "docker-compose.yml").read_text()))
    example = {line.split("=", 1)[0].lstrip("# ").strip()
               for line in (REPO / ".env.example").read_text().splitlines() if "=" in line}
    assert used <= example, used - example
    assert set(REQUIRED) <= used


def test_env_example_reads_the_same_in_compose_and_in_sh(tmp_path):
    """docs/compose.md has the host's shell source .env (`set -a; . ./.env`): it must parse there
    too, to the values Compose reads (an unquoted cron line would run `2 * * *` as a command)."""
    env_file = tmp_path / ".env"
    env_file.write_text((REPO / ".env.example").read_text())
    expected = read_dotenv(env_file.read_text())
    proc = subprocess.run(["sh", "-c", 'set -a; . "$1"; set +a; env -0', "sh", str(env_file)],
                          capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    sourced = dict(item.split("=", 1) for item in proc.stdout.split("\0") if "=" in item)
    assert {name: sourced.get(name) for name in expected} == expected


def test_dockerfile_bakes_in_no_credential():
    text = (REPO / "Dockerfile").read_text()
    assert not re.search(r"AWS_SECRET|AWS_ACCESS_KEY_ID|PASSWORD|AUTH_STRING|MINIO_ROOT", text)
    assert "USER app" in text


# -- the Compose-spec parser ---------------------------------------------------------------------
def parse_with_compose_spec(compose: dict):
    from compose_spec import PyCompose

    parsed = PyCompose.from_json(json.dumps(compose))
    parsed.validate()
    parsed.to_spec()  # and the pydantic model of the whole specification
    return parsed


@pytest.mark.parametrize("source", ["required values only", ".env.example filled in"])
def test_compose_spec_parser_accepts_it(source):
    env = REQUIRED if source == "required values only" else env_example_filled_in()
    compose = render(env)
    parsed = parse_with_compose_spec(compose)
    assert set(parsed.service_names()) == set(SERVICES)
    # compose-spec 0.2.1's validate() lets an undeclared named volume or an unknown depends_on
    # through (tried): checked here.
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        assert set(service.get("depends_on", {})) <= set(SERVICES), name
        for volume in service.get("volumes", []):
            origin = volume.split(":", 1)[0]
            if not origin.startswith((".", "/")):
                assert origin in declared, f"{name}: volume {origin} is not declared"
            else:
                assert (REPO / origin).exists(), f"{name}: bind mount {origin} is not in the repo"


def test_compose_spec_parser_refuses_a_bad_bind_address():
    """The parser checks what we rely on: a mistyped MNIST_BIND_ADDRESS is refused."""
    with pytest.raises(ValueError, match="ip address"):
        parse_with_compose_spec(render({**REQUIRED, "MNIST_BIND_ADDRESS": "localhost:"}))


def test_the_worker_environment_is_accepted_by_the_settings(monkeypatch):
    """The worker's environment as compose renders it from .env.example (empty optional values
    included) passes load_settings(), which deployments/serve.py calls first."""
    from mnist_pipeline.settings import load_settings

    worker_env = render(env_example_filled_in())["services"]["worker"]["environment"]
    for name in list(os.environ):
        if name.startswith(("MNIST_", "AWS_")):
            monkeypatch.delenv(name)
    for name, value in worker_env.items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings()
    assert settings.store_url == "s3://mnist-pipeline" and settings.aws_endpoint_url_s3 == "http://minio:9000"


@pytest.mark.skipif(not shutil.which("docker") or subprocess.run(
    ["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose plugin is not installed on this machine")
def test_docker_compose_config_accepts_it_and_requires_the_login(tmp_path):
    def config(env: dict[str, str]) -> subprocess.CompletedProcess:
        env_file = tmp_path / ".env"
        env_file.write_text("".join(f"{k}='{v}'\n" for k, v in env.items()))
        return subprocess.run(["docker", "compose", "--env-file", str(env_file), "-f", str(REPO / "docker-compose.yml"),
                               "config", "--quiet"], capture_output=True, text=True)

    proc = config(env_example_filled_in())
    assert proc.returncode == 0, proc.stderr
    proc = config({k: v for k, v in env_example_filled_in().items() if k != "PREFECT_AUTH_STRING"})
    assert proc.returncode != 0 and "PREFECT_AUTH_STRING" in proc.stderr


# -- create-bucket: the bucket, the pipeline's user and its policy -------------------------------
FAKE_MC = """#!{python}
# Stands in for `mc`: records each call (arguments, stdin, the policy file it is given).
import json, os, sys
args = sys.argv[1:]
record = {{"argv": args, "stdin": sys.stdin.read()}}
if args[:3] == ["admin", "policy", "create"]:
    record["policy"] = open(args[5]).read()
with open(os.environ["FAKE_MC_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
if os.environ.get("FAKE_MC_FAIL") and " ".join(args).startswith(os.environ["FAKE_MC_FAIL"]):
    sys.exit("mc: <ERROR> simulated failure")
"""

SETUP_ENV = {"MINIO_ROOT_USER": "root-admin", "MINIO_ROOT_PASSWORD": "root-Pa55-word-0",
             "AWS_ACCESS_KEY_ID": "mnist-pipeline", "AWS_SECRET_ACCESS_KEY": "pipeline-s3cret-1",
             "PREFECT_AUTH_STRING": "admin:prefect-pass-2", "MNIST_BUCKET": "team-a-mnist",
             "POSTGRES_PASSWORD": "postgresPass3"}
SHELLS = [shell for shell in ("dash", "bash") if shutil.which(shell)]  # the mc image's sh is bash


def run_setup(tmp_path, shell: str, env: dict[str, str] | None = None, fail: str = ""):
    """create-bucket's entrypoint, as compose renders it, with `mc` recorded instead of run."""
    service = render(env or SETUP_ENV)["services"]["create-bucket"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    mc = bin_dir / "mc"
    mc.write_text(FAKE_MC.format(python=sys.executable))
    mc.chmod(0o755)
    log = tmp_path / "mc.log"
    log.unlink(missing_ok=True)
    # the container sees the template where the volume mounts it
    mount = next(v for v in service["volumes"] if v.endswith(":ro"))
    source, target, _ = mount.split(":")
    assert service["environment"]["MNIST_POLICY_TEMPLATE"] == target
    run_env = {**service["environment"], "MNIST_POLICY_TEMPLATE": str(REPO / source),
               "PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmp_path), "FAKE_MC_LOG": str(log),
               "FAKE_MC_FAIL": fail}
    entrypoint = service["entrypoint"]
    assert entrypoint[0] == "/bin/sh"
    proc = subprocess.run([shell, *entrypoint[1:]], env=run_env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


@pytest.mark.parametrize("shell", SHELLS)
def test_create_bucket_makes_bucket_user_and_policy_keeping_secrets_off_command_lines(tmp_path, shell):
    proc, calls = run_setup(tmp_path, shell)
    assert proc.returncode == 0, proc.stderr
    argv = [call["argv"] for call in calls]
    policy_file = str(tmp_path / "mnist-pipeline-policy.json")
    assert argv == [
        ["alias", "set", "store", "http://minio:9000"],
        ["mb", "--ignore-existing", "store/team-a-mnist"],
        ["admin", "policy", "create", "store", "mnist-pipeline", policy_file],
        ["admin", "user", "add", "store", "mnist-pipeline"],
        ["admin", "policy", "attach", "store", "mnist-pipeline", "--user", "mnist-pipeline"],
    ]
    assert calls[0]["stdin"] == "root-admin\nroot-Pa55-word-0\n"  # mc alias set reads keys from stdin
    assert calls[3]["stdin"] == "pipeline-s3cret-1\n"  # mc admin user add reads the secret from stdin
    secrets = [SETUP_ENV["MINIO_ROOT_PASSWORD"], SETUP_ENV["AWS_SECRET_ACCESS_KEY"]]
    for secret in secrets:
        assert not any(secret in " ".join(a) for a in argv), "a secret on a command line shows in ps"
        assert secret not in proc.stdout + proc.stderr
    # the policy is the template with the bucket substituted, nothing else changed
    template = json.loads(POLICY_TEMPLATE.read_text())
    assert json.loads(calls[2]["policy"]) == json.loads(json.dumps(template).replace("@MNIST_BUCKET@", "team-a-mnist"))

    # idempotent on restart: the same calls again (mc itself: `mb --ignore-existing`, policy create
    # replaces, user add updates the secret, attach accepts an attached policy)
    again, calls_again = run_setup(tmp_path, shell)
    assert again.returncode == 0 and calls_again == calls


@pytest.mark.parametrize("step", ["mb", "admin policy create", "admin user add", "admin policy attach"])
def test_create_bucket_fails_when_an_mc_step_fails(tmp_path, step):
    """The worker waits for service_completed_successfully: a failed step must fail the service."""
    proc, calls = run_setup(tmp_path, SHELLS[0], fail=step)
    assert proc.returncode != 0
    assert " ".join(calls[-1]["argv"]).startswith(step)  # nothing after the failed step


def test_create_bucket_refuses_the_root_account_as_the_pipelines_user(tmp_path):
    env = {**SETUP_ENV, "AWS_ACCESS_KEY_ID": SETUP_ENV["MINIO_ROOT_USER"]}
    proc, calls = run_setup(tmp_path, SHELLS[0], env=env)
    assert proc.returncode == 1 and calls == []
    assert proc.stderr.strip().splitlines() == [
        "error: AWS_ACCESS_KEY_ID must differ from MINIO_ROOT_USER (the pipeline gets its own MinIO "
        "user); change it in .env"]


def test_policy_grants_exactly_the_pipelines_actions_on_its_bucket():
    policy = json.loads(POLICY_TEMPLATE.read_text())
    granted = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and not statement.get("Condition")
        for resource in statement["Resource"]:
            granted.setdefault(resource, set()).update(statement["Action"])
    assert granted == {
        "arn:aws:s3:::@MNIST_BUCKET@": {"s3:ListBucket", "s3:GetBucketLocation"},
        "arn:aws:s3:::@MNIST_BUCKET@/*": {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"},
    }


@pytest.fixture
def rendered_policy(tmp_path) -> str:
    proc, calls = run_setup(tmp_path, SHELLS[0])
    assert proc.returncode == 0, proc.stderr
    return calls[2]["policy"]


@pytest.fixture
def moto_with_the_pipeline_user(rendered_policy):
    """moto S3 + IAM on 127.0.0.1: the pipeline's bucket, someone else's bucket, and a user with the
    rendered policy, set up with auth off; then /moto-api/reset-auth turns IAM enforcement on for
    every later request (INITIAL_NO_AUTH_ACTION_COUNT=0)."""
    server = MotoServer()
    server.start()
    admin = {"endpoint_url": server.endpoint, "region_name": "us-east-1",
             "aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    s3 = boto3.client("s3", **admin)
    s3.create_bucket(Bucket="team-a-mnist")
    s3.create_bucket(Bucket="someone-else")
    s3.put_object(Bucket="someone-else", Key="private.txt", Body=b"not yours")
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="mnist-pipeline")
    arn = iam.create_policy(PolicyName="mnist-pipeline", PolicyDocument=rendered_policy)["Policy"]["Arn"]
    iam.attach_user_policy(UserName="mnist-pipeline", PolicyArn=arn)
    key = iam.create_access_key(UserName="mnist-pipeline")["AccessKey"]
    request = urllib.request.Request(server.endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
    assert json.load(urllib.request.urlopen(request, timeout=10))["status"] == "ok"
    user = {"endpoint_url": server.endpoint, "region_name": "us-east-1",
            "aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"],
            "config": Config(s3={"addressing_style": "path"}, signature_version="s3v4")}
    yield server, user
    server.stop()


def refused(call, *args, **kwargs) -> str:
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    return info.value.response["Error"]["Code"]


def test_the_policy_on_moto_iam_allows_the_pipelines_bucket_and_nothing_else(moto_with_the_pipeline_user):
    """moto stands in for MinIO because no Docker engine runs here (MinIO policies are AWS IAM
    policy syntax). Over HTTP with boto3 as the pipeline's user: everything the store does in its
    bucket works; another bucket, creating a bucket and IAM are refused.
    Not covered: HEAD bucket (the store's existence check), which MinIO and AWS authorise as
    s3:ListBucket but moto as s3:HeadBucket, an action MinIO's policies do not have."""
    _, user = moto_with_the_pipeline_user
    s3 = boto3.client("s3", **user)
    bucket = "team-a-mnist"

    etag = s3.put_object(Bucket=bucket, Key="runs/r1/metrics.json", Body=b"{}")["ETag"]
    s3.put_object(Bucket=bucket, Key="registry/production.json", Body=b"{}", IfNoneMatch="*")
    s3.put_object(Bucket=bucket, Key="runs/r1/metrics.json", Body=b"{ }", IfMatch=etag)
    assert s3.get_object(Bucket=bucket, Key="runs/r1/metrics.json")["Body"].read() == b"{ }"
    assert s3.head_object(Bucket=bucket, Key="registry/production.json")["ContentLength"] == 2
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="runs/")["Contents"]
    assert [obj["Key"] for obj in listed] == ["runs/r1/metrics.json"]
    s3.get_bucket_location(Bucket=bucket)
    s3.delete_object(Bucket=bucket, Key="runs/r1/metrics.json")
    assert s3.list_objects_v2(Bucket=bucket, Prefix="runs/")["KeyCount"] == 0

    assert refused(s3.list_objects_v2, Bucket="someone-else") == "AccessDenied"
    assert refused(s3.get_object, Bucket="someone-else", Key="private.txt") == "AccessDenied"
    assert refused(s3.put_object, Bucket="someone-else", Key="x", Body=b"x") == "AccessDenied"
    assert refused(s3.delete_object, Bucket="someone-else", Key="private.txt") == "AccessDenied"
    assert refused(s3.create_bucket, Bucket="a-new-bucket") == "AccessDenied"
    assert refused(s3.delete_bucket, Bucket=bucket) == "AccessDenied"
    iam = boto3.client("iam", **{k: v for k, v in user.items() if k != "config"})
    assert refused(iam.list_users) == "AccessDenied"


# -- Prefect: the login, and the health check with it on -----------------------------------------
AUTH = "admin:compose-test-password-7"


COMPOSE_DATABASE = "prefect_compose"


@pytest.fixture(scope="module")
def prefect_auth_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prefect-auth-home")


@pytest.fixture(scope="module")
def prefect_server_with_login(prefect_auth_home, postgres):
    """`prefect server start` on 127.0.0.1 with the server's environment from the compose file, its
    database URL pointed from the `postgres` service to the session's PostgreSQL cluster."""
    postgres.create_database(COMPOSE_DATABASE)
    server_env = render({**REQUIRED, "PREFECT_AUTH_STRING": AUTH, "POSTGRES_USER": postgres.user,
                         "POSTGRES_PASSWORD": postgres.password, "POSTGRES_DB": COMPOSE_DATABASE,
                         })["services"]["prefect-server"]["environment"]
    url = server_env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.count("@postgres:5432/") == 1
    server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = url.replace("@postgres:5432/", f"@127.0.0.1:{postgres.port}/")
    port, home = free_port(), prefect_auth_home
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({k: str(v) for k, v in server_env.items()}, PREFECT_HOME=str(home))
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(base + "/api/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prefect server not healthy within 120 s"
            time.sleep(0.5)
    yield base
    proc.terminate()
    proc.wait(30)
    log.close()


def status(url: str, auth: str | None = None, data: bytes | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    try:
        return urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


def run_healthcheck(base: str, path: str = "/api/health") -> subprocess.CompletedProcess:
    """The prefect-server service's healthcheck command, pointed at this server, with no credential."""
    kind, program, flag, code = SERVICES["prefect-server"]["healthcheck"]["test"]
    assert (kind, program, flag) == ("CMD", "python", "-c") and "http://localhost:4200/api/health" in code
    code = code.replace("http://localhost:4200/api/health", base + path)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"]})


def test_the_api_requires_the_login_and_the_health_check_passes_without_it(prefect_server_with_login):
    base = prefect_server_with_login
    assert status(base + "/api/flows/filter", data=b"{}") == 401
    assert status(base + "/api/flows/filter", auth="admin:wrong", data=b"{}") == 401
    assert status(base + "/api/flows/filter", auth=AUTH, data=b"{}") == 200
    assert status(base + "/api/admin/version") == 401
    assert run_healthcheck(base).returncode == 0  # GET /api/health is exempt from the login
    # and the same check on a protected path fails: the exemption is what keeps it working
    assert run_healthcheck(base, "/api/admin/version").returncode != 0


def test_the_server_keeps_its_runs_in_postgres_and_no_password_in_its_log(prefect_server_with_login, postgres,
                                                                          prefect_auth_home):
    """The compose file's URL works as written: Prefect migrated the database it names, on
    PostgreSQL, logged in with POSTGRES_USER / POSTGRES_PASSWORD (password authentication here)."""
    assert postgres.sql("SELECT count(*) FROM alembic_version", COMPOSE_DATABASE) == "1"
    owner = postgres.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'flow_run'", COMPOSE_DATABASE)
    assert owner == postgres.user
    assert postgres.password not in (prefect_auth_home / "server.log").read_text()


def run_pg_healthcheck(port: int) -> subprocess.CompletedProcess:
    """The postgres service's healthcheck as the container's shell runs it (its environment, `$$`
    read as `$`), at a port on 127.0.0.1 (PGPORT: the container's is the default 5432)."""
    kind, command = render(REQUIRED)["services"]["postgres"]["healthcheck"]["test"]
    environment = render(REQUIRED)["services"]["postgres"]["environment"]
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30,
                          env={**environment, "PATH": f"{PG_BIN}:/usr/bin:/bin", "PGPORT": str(port)})


def test_the_postgres_healthcheck_passes_on_a_running_server_and_fails_without_one(postgres):
    assert run_pg_healthcheck(postgres.port).returncode == 0
    assert run_pg_healthcheck(free_port()).returncode != 0


def test_the_ui_asks_for_the_login(prefect_server_with_login):
    settings = json.load(urllib.request.urlopen(prefect_server_with_login + "/ui-settings", timeout=10))
    assert settings["auth"] == "BASIC"


def test_the_worker_logs_in_with_prefect_api_auth_string(prefect_server_with_login):
    """The worker's client settings, as compose renders them (PREFECT_API_URL pointed here)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    worker_env = render({**REQUIRED, "PREFECT_AUTH_STRING": AUTH})["services"]["worker"]["environment"]
    api = prefect_server_with_login + "/api"
    with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: worker_env["PREFECT_API_AUTH_STRING"]}):
        with get_client(sync_client=True) as client:
            assert client.read_flows() == []
    with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: "admin:wrong"}):
        with get_client(sync_client=True) as client:
            with pytest.raises(PrefectHTTPStatusError, match="401"):
                client.read_flows()
