import pytest

from mnist_pipeline.errors import ConfigError
from mnist_pipeline.settings import PUBLIC_MIRRORS, Settings, load_settings

pytestmark = pytest.mark.unit  # no server, no training: `make test-unit`


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("MNIST_STORE_URL", "MNIST_MIRRORS", "MNIST_MIN_ACCURACY", "MNIST_MIN_CLASS_RECALL",
                 "AWS_ENDPOINT_URL_S3",
                 "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MNIST_S3_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_a_local_store_and_the_public_mirrors():
    s = load_settings()
    assert not s.is_s3 and s.local_store_path().name == "mnist-store"
    assert s.mirrors == PUBLIC_MIRRORS and s.min_accuracy == 0.97
    assert s.min_class_recall is None  # the per-digit gate is off unless asked for


def test_environment_is_read(monkeypatch):
    monkeypatch.setenv("MNIST_STORE_URL", "s3://my-bucket/team/a")
    monkeypatch.setenv("MNIST_MIRRORS", " /data/a , http://x.example/mnist/ ,")
    monkeypatch.setenv("MNIST_MIN_ACCURACY", "0.98")
    s = load_settings()
    assert s.is_s3 and s.mirrors == ("/data/a", "http://x.example/mnist/") and s.min_accuracy == 0.98


@pytest.mark.parametrize("name,value,needle", [
    ("MNIST_MIN_ACCURACY", "1.5", "less than or equal to 1"),
    ("MNIST_MIN_ACCURACY", "high", "valid number"),
    ("MNIST_STORE_URL", "s3://Bad_Bucket", "not a valid S3 bucket name"),
    ("MNIST_STORE_URL", "ftp://host/x", "s3://BUCKET"),
    ("MNIST_MIRRORS", " , ", "at least one mirror"),
    ("AWS_ENDPOINT_URL_S3", "localhost:9000", "http://"),
    ("MNIST_MIN_CLASS_RECALL", "1.2", "less than or equal to 1"),
    ("AWS_DEFAULT_REGION", "bad region!", "a region name such as us-east-1"),
    ("MNIST_STORE_URL", "~no-such-user-here/store", "a home folder ('~...') this machine cannot find"),
    ("MNIST_DASK_ADDRESS", "tcp://[::1", "must look like tcp://HOST:PORT"),  # these two failed the run later
    ("MNIST_DASK_ADDRESS", "tcp://127.0.0.1:99999", "must look like tcp://HOST:PORT"),
])
def test_invalid_value_is_one_line_naming_the_variable(monkeypatch, name, value, needle):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert message.startswith(f"{name} is invalid") and needle in message and "\n" not in message


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:8786", "tcp://[::1]:8786", "tls://scheduler.example:8786"])
def test_a_dask_address_is_taken(monkeypatch, address):
    monkeypatch.setenv("MNIST_DASK_ADDRESS", address)
    assert load_settings().dask_address == address


@pytest.mark.parametrize("name", ["MNIST_MIN_ACCURACY", "MNIST_MIRRORS", "MNIST_DEADLINE_S", "AWS_MAX_ATTEMPTS",
                                  "AWS_RETRY_MODE", "MNIST_NOTIFY_ON", "MNIST_KEEP_LAST", "MNIST_MIN_CLASS_RECALL",
                                  "AWS_ENDPOINT_URL_S3", "MNIST_S3_PUBLIC_URL", "AWS_DEFAULT_REGION"])
def test_an_empty_variable_is_an_unset_one(monkeypatch, name):
    """As compose passes `${X:-}`: before, five of these were an error and the rest unset."""
    field = next(f for f, info in Settings.model_fields.items() if name in str(info.validation_alias))
    monkeypatch.delenv(name, raising=False)
    unset = getattr(load_settings(), field)
    monkeypatch.setenv(name, "")
    assert getattr(load_settings(), field) == unset


def test_an_empty_store_url_is_refused_not_taken_for_the_default_folder(monkeypatch):
    monkeypatch.setenv("MNIST_STORE_URL", "")
    with pytest.raises(ConfigError, match=r"^MNIST_STORE_URL is invalid: is empty; give s3://BUCKET"):
        load_settings()


def test_an_empty_variable_gives_way_to_an_override_or_to_the_next_name(monkeypatch, tmp_path):
    """A caller's store, given by field or variable name, stands over an empty MNIST_STORE_URL; an
    error about the endpoint names the variable that held it, not its empty alias."""
    monkeypatch.setenv("MNIST_STORE_URL", "")
    for override in ({"store_url": str(tmp_path)}, {"MNIST_STORE_URL": str(tmp_path)}):
        assert load_settings(**override).store_url == str(tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "ftp://127.0.0.1:9000")
    with pytest.raises(ConfigError, match="^AWS_ENDPOINT_URL is invalid: must start with http"):
        load_settings(store_url=str(tmp_path))


def test_many_attempts_are_boto3s_to_take_the_deadline_bounds_them(monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "50")
    assert load_settings().aws_max_attempts == 50
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "0")
    with pytest.raises(ConfigError, match="^AWS_MAX_ATTEMPTS is invalid"):
        load_settings()


@pytest.mark.parametrize("url", ["s3://AKIAKEY:SUPERSECRET-123@my-bucket", "s3://AKIAKEY:SUPER/SECRET-123@my-bucket/a",
                                 "s3://SUPERSECRET-123@my-bucket"])
def test_credentials_in_the_store_url_are_refused_never_echoed_and_sent_where_they_belong(monkeypatch, url):
    monkeypatch.setenv("MNIST_STORE_URL", url)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value) == ("MNIST_STORE_URL is invalid: must not carry credentials (user info before '@'); put "
                              "them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; fix it in the environment")


CREDENTIALS = ("is invalid: must not carry credentials (user info before '@'); put them in AWS_ACCESS_KEY_ID and "
               "AWS_SECRET_ACCESS_KEY; fix it in the environment")


@pytest.mark.parametrize("url", ["s3://AKIAKEY:SUPERSECRET-123%40my-bucket",
                                 "s3://AKIAKEY:SUPER/SECRET-123%40my-bucket"])
def test_credentials_before_an_encoded_at_in_the_store_url_are_refused_too(monkeypatch, url):
    """Found by an audit: the error echoed the bucket name, `AKIAKEY:SUPERSECRET-123%40my-bucket`."""
    monkeypatch.setenv("MNIST_STORE_URL", url)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value) == f"MNIST_STORE_URL {CREDENTIALS}"


@pytest.mark.parametrize("url", ["s3://AKIAKEY:SUPERSECRET-123", "s3://AKIAKEY:SUPERSECRET-123/prefix"])
def test_a_bad_bucket_name_that_may_be_a_secret_is_not_echoed(monkeypatch, url):
    monkeypatch.setenv("MNIST_STORE_URL", url)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "not a valid S3 bucket name" in str(err.value) and "SUPERSECRET" not in str(err.value)


def test_a_store_url_that_lost_its_double_slash_is_refused_not_taken_for_a_folder(monkeypatch):
    """`s3:/bkt` would have become a folder named `s3:` (its user info in a folder name)."""
    monkeypatch.setenv("MNIST_STORE_URL", "s3:/AKIAKEY:SUPERSECRET-123@my-bucket")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value) == ("MNIST_STORE_URL is invalid: must be s3://BUCKET[/PREFIX] or a local folder path; "
                              "fix it in the environment")


@pytest.mark.parametrize("name,url", [("AWS_ENDPOINT_URL_S3", "http://EPUSER:EPSECRET@127.0.0.1:9000"),
                                      ("AWS_ENDPOINT_URL", "http://EPUSER:EPSECRET@127.0.0.1:9000"),
                                      ("MNIST_S3_PUBLIC_URL", "https://PUBUSER:PUBSECRET@s3.example"),
                                      ("MNIST_S3_PUBLIC_URL", "http://PUBUSER:PUBSECRET%40localhost:9000")])
def test_credentials_in_an_endpoint_are_refused_naming_the_variable_never_its_value(monkeypatch, name, url):
    """Found by an audit: presigned links (`report --url`, the dashboard) carried them. boto3 never
    sends them, so they are refused rather than silently dropped."""
    monkeypatch.setenv(name, url)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value) == f"{name} {CREDENTIALS}"


def test_secrets_are_never_shown(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SUPERSECRET-123")
    s = load_settings()
    assert "SUPERSECRET" not in repr(s) and "SUPERSECRET" not in str(s.model_dump())
    assert s.aws_secret_access_key.get_secret_value() == "SUPERSECRET-123"


def test_a_store_url_with_credentials_is_one_line_without_them_from_the_cli_and_the_flow(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import REPO

    env = dict(os.environ, MNIST_STORE_URL="s3://AKIAKEY:SUPERSECRET-123@my-bucket", PREFECT_HOME=str(tmp_path))
    env.pop("PREFECT_API_URL", None)
    for cmd, status in (([str(Path(sys.executable).parent / "mnist-pipeline"), "runs"], 1),
                        ([sys.executable, "flows/train_flow.py"], 2)):
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        output = proc.stdout + proc.stderr
        assert proc.returncode == status and "Traceback" not in output, output
        assert "AKIAKEY" not in output and "SUPERSECRET" not in output
        assert proc.stderr.splitlines() == ["error: MNIST_STORE_URL is invalid: must not carry credentials (user info "
                                            "before '@'); put them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; "
                                            "fix it in the environment"]


def test_an_endpoint_with_credentials_is_one_line_without_them_before_any_link_is_made(tmp_path):
    """The commands the audit saw print or store presigned links with them: `report --url`, `dashboard`."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import REPO

    cli = str(Path(sys.executable).parent / "mnist-pipeline")
    env = dict(os.environ, MNIST_STORE_URL="s3://my-bucket", MNIST_S3_PUBLIC_URL="http://PUBUSER:PUBSECRET@localhost:9",
               PREFECT_HOME=str(tmp_path))
    env.pop("PREFECT_API_URL", None)
    for args in (["report", "run-a", "--url"], ["dashboard", "-o", str(tmp_path / "d.html")]):
        proc = subprocess.run([cli, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and proc.stdout == "" and "PUBSECRET" not in proc.stderr
        assert proc.stderr.splitlines() == [f"error: MNIST_S3_PUBLIC_URL {CREDENTIALS}"]
    assert not (tmp_path / "d.html").exists()
