"""Bad input the run cannot fix by retrying: each a one-line error, a non-zero exit, nothing
promoted. S3 with IAM enforced is a second moto server whose first requests create a user."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest

from tests.conftest import REPO, MotoServer, free_port, prefect_home


@pytest.fixture(scope="module")
def moto_with_auth():
    """moto enforcing IAM: unknown keys get 403; `reader` may read and write objects, not create buckets."""
    server = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    server.start()
    iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="objects-only", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*",
                                               # moto checks HEAD bucket as s3:HeadBucket (AWS: s3:ListBucket)
                                               "Action": ["s3:ListBucket", "s3:HeadBucket", "s3:GetObject",
                                                          "s3:PutObject"]}]}))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    yield server, key
    server.stop()


def run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "flows/train_flow.py", "--epochs", "1", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


def one_error_line(proc) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return errors[0]


@pytest.fixture
def base_env(mnist_mirror, tmp_path, prefect_db):
    env = dict(os.environ, MNIST_MIRRORS=str(mnist_mirror), PREFECT_HOME=prefect_home(tmp_path / "prefect", prefect_db),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", AWS_DEFAULT_REGION="us-east-1")
    env.pop("MNIST_MIN_ACCURACY", None)
    return env


def test_wrong_credentials(moto_with_auth, base_env):
    server, _ = moto_with_auth
    env = dict(base_env, MNIST_STORE_URL="s3://any-bucket", AWS_ENDPOINT_URL_S3=server.endpoint,
               AWS_ACCESS_KEY_ID="AKIAWRONGWRONG", AWS_SECRET_ACCESS_KEY="wrong-secret-7d1e")
    proc = run(env)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "S3 refused the credentials or the permission" in line
    assert "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in line
    assert "wrong-secret-7d1e" not in proc.stdout + proc.stderr
    assert "AwaitingRetry" not in proc.stdout + proc.stderr  # not retried: it cannot get better


@pytest.mark.slow  # a store the flow cannot use: test_wrong_credentials is the default suite's case
def test_missing_bucket_that_cannot_be_created(moto_with_auth, base_env):
    server, key = moto_with_auth
    env = dict(base_env, MNIST_STORE_URL="s3://no-such-bucket", AWS_ENDPOINT_URL_S3=server.endpoint,
               AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
    proc = run(env)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "bucket 'no-such-bucket' is missing and could not be created (AccessDenied)" in line
    assert key["SecretAccessKey"] not in proc.stdout + proc.stderr


@pytest.mark.slow  # bounded fetch failure: test_failfast's dripping mirror is the default suite's case
def test_unreachable_mirror_list_fails_after_its_retries(base_env, tmp_path):
    mirrors = ",".join(f"http://127.0.0.1:{free_port()}/mnist/" for _ in range(2))
    env = dict(base_env, MNIST_MIRRORS=mirrors, MNIST_STORE_URL=str(tmp_path / "store"))
    proc = run(env)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "no mirror answered" in line and "check the network or MNIST_MIRRORS" in line
    # network errors are retried by the flow (every mirror is tried in order on each attempt)
    assert "Received non-final state 'AwaitingRetry'" in proc.stdout + proc.stderr
    assert not (tmp_path / "store" / "registry").exists()
