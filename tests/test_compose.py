"""docker-compose.yml checked statically (no Docker engine runs here): the services the worker
needs, wiring by environment that matches the settings, and no secret written in it."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from mnist_pipeline.settings import Settings
from tests.conftest import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def setting_env_names() -> set[str]:
    names = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        names |= {alias} if isinstance(alias, str) else set(alias.choices)
    return names


def test_the_stack_has_storage_bucket_server_and_worker():
    assert {"minio", "create-bucket", "prefect-server", "worker"} <= set(SERVICES)
    worker = SERVICES["worker"]
    assert worker["build"] == "." and (REPO / "Dockerfile").is_file()
    assert worker["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert SERVICES["create-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "deployments/serve.py" in " ".join(worker["command"])


def test_minio_is_pinned_persistent_and_health_checked():
    minio = SERVICES["minio"]
    assert re.search(r":RELEASE\.\d{4}-\d\d-\d\dT", minio["image"]), "pin the MinIO release"
    assert "latest" not in SERVICES["create-bucket"]["image"]
    assert any(v.startswith("minio-data:") for v in minio["volumes"]) and "minio-data" in COMPOSE["volumes"]
    assert minio["healthcheck"]["test"]
    assert "9000:9000" in minio["ports"] and "9001:9001" in minio["ports"]


def test_prefect_server_ui_port_and_database_volume():
    server = SERVICES["prefect-server"]
    assert "4200:4200" in server["ports"]
    home = server["environment"]["PREFECT_HOME"]
    assert any(v == f"prefect-data:{home}" for v in server["volumes"]) and "prefect-data" in COMPOSE["volumes"]
    assert server["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_worker_environment_matches_the_settings_and_the_services():
    env = SERVICES["worker"]["environment"]
    ours = {k for k in env if k.startswith(("MNIST_", "AWS_"))}
    known = setting_env_names() | {"MNIST_CRON", "MNIST_TIMEZONE"}  # the last two: deployments/serve.py
    assert ours <= known, f"unknown variables: {ours - known}"
    assert {"MNIST_STORE_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= ours
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert env["MNIST_STORE_URL"].startswith("s3://")
    bucket_default = SERVICES["create-bucket"]["environment"]["MNIST_BUCKET"]
    assert bucket_default in env["MNIST_STORE_URL"]  # the bucket created is the bucket used
    # the worker and MinIO take the same credentials, from the same .env variables
    minio_env = SERVICES["minio"]["environment"]
    assert INTERPOLATION.search(minio_env["MINIO_ROOT_USER"]).group(1) == INTERPOLATION.search(env["AWS_ACCESS_KEY_ID"]).group(1)
    assert INTERPOLATION.search(minio_env["MINIO_ROOT_PASSWORD"]).group(1) == INTERPOLATION.search(env["AWS_SECRET_ACCESS_KEY"]).group(1)


def _secret_like(name: str) -> bool:
    return bool(re.search(r"PASSWORD|SECRET|KEY_ID|TOKEN|ROOT_USER|MC_HOST", name))


def test_no_secret_is_written_in_the_compose_file():
    text = (REPO / "docker-compose.yml").read_text()
    assert "minioadmin" not in text.lower()
    for service in SERVICES.values():
        for name, value in (service.get("environment") or {}).items():
            if _secret_like(name):
                refs = INTERPOLATION.findall(str(value))
                literal = INTERPOLATION.sub("", str(value))
                assert refs, f"{name} must come from .env"
                assert not re.search(r"\$\{[A-Z_]+:-", str(value)), f"{name} must have no default"
                assert not re.search(r"[A-Za-z0-9]{6,}", literal.replace("http", "").replace("minio", "")), \
                    f"{name} holds a literal: {value!r}"


def test_every_variable_the_compose_file_reads_is_in_env_example():
    used = set(INTERPOLATION.findall((REPO / "docker-compose.yml").read_text()))
    example = {line.split("=", 1)[0].lstrip("# ").strip()
               for line in (REPO / ".env.example").read_text().splitlines() if "=" in line}
    assert used - {"PREFECT_UI_API_URL"} <= example, used - example


def test_dockerfile_bakes_in_no_credential():
    text = (REPO / "Dockerfile").read_text()
    assert not re.search(r"AWS_SECRET|AWS_ACCESS_KEY_ID|PASSWORD", text)
    assert "USER app" in text


@pytest.mark.skipif(not shutil.which("docker") or subprocess.run(
    ["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="the docker compose plugin is not installed on this machine")
def test_docker_compose_config_accepts_it(tmp_path):
    env = tmp_path / ".env"
    env.write_text((REPO / ".env.example").read_text().replace("AWS_SECRET_ACCESS_KEY=", "AWS_SECRET_ACCESS_KEY=x" * 1 + "y" * 20))
    proc = subprocess.run(["docker", "compose", "--env-file", str(env), "-f", str(REPO / "docker-compose.yml"),
                           "config", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
