import pytest

from mnist_pipeline.errors import ConfigError
from mnist_pipeline.settings import PUBLIC_MIRRORS, load_settings

pytestmark = pytest.mark.unit  # no server, no training: `make test-unit`


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("MNIST_STORE_URL", "MNIST_MIRRORS", "MNIST_MIN_ACCURACY", "MNIST_MIN_CLASS_RECALL",
                 "AWS_ENDPOINT_URL_S3",
                 "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
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
])
def test_invalid_value_is_one_line_naming_the_variable(monkeypatch, name, value, needle):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert message.startswith(f"{name} is invalid") and needle in message and "\n" not in message


def test_secrets_are_never_shown(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SUPERSECRET-123")
    s = load_settings()
    assert "SUPERSECRET" not in repr(s) and "SUPERSECRET" not in str(s.model_dump())
    assert s.aws_secret_access_key.get_secret_value() == "SUPERSECRET-123"
