"""The one settings object, read from the environment (names fixed by DESIGN.md)."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mnist_pipeline.errors import ConfigError

DEFAULT_STORE_URL = "mnist-store"
PUBLIC_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def bucket_name_problem(bucket: str) -> str | None:
    """Why S3 would refuse this bucket name (AWS's naming rules, which MinIO follows), or None."""
    if not _BUCKET.match(bucket):
        return "must be 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        return "must not contain '..', '.-' or '-.'"
    try:
        ipaddress.IPv4Address(bucket)
        return "must not look like an IP address"
    except ValueError:
        pass
    if bucket.startswith(("xn--", "sthree-")) or bucket.endswith(("-s3alias", "--ol-s3")):
        return "uses a prefix or suffix that S3 reserves"
    return None


def _prefix_problem(prefix: str) -> bool:
    return any(segment in ("", ".", "..") for segment in prefix.split("/"))


# Characters a URL client reads as something else (query, fragment, escape) or that do not survive
# a link: a prefix `q?token=X` was stored as such, printed whole in report links and hidden in logs.
_URL_UNSAFE = re.compile(r"[?#%\\\s\x00-\x1f\x7f]")


def _has_userinfo(url: str) -> bool:
    """A user or password before the host, its '@' plain or encoded, anywhere: a password may
    hold an unencoded '/'."""
    return "@" in url or "%40" in url.lower()


_CREDENTIALS = ("must not carry credentials (user info before '@'); put them in AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY")
_SCHEME_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # `s3:/bkt`: a URL whose `//` was lost


class Settings(BaseSettings):
    # An empty variable is an unset one (compose passes `${X:-}` as ""), except MNIST_STORE_URL:
    # see load_settings.
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, env_ignore_empty=True)

    store_url: str = Field(DEFAULT_STORE_URL, validation_alias="MNIST_STORE_URL")
    mirrors: Annotated[tuple[str, ...], NoDecode] = Field(
        PUBLIC_MIRRORS, validation_alias="MNIST_MIRRORS"
    )
    min_accuracy: float = Field(0.97, ge=0.0, le=1.0, validation_alias="MNIST_MIN_ACCURACY")
    # boto3's own variables: read here so that they are validated once and never echoed.
    aws_endpoint_url_s3: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    )
    aws_access_key_id: SecretStr | None = Field(None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(None, validation_alias="AWS_SECRET_ACCESS_KEY")
    aws_default_region: str | None = Field(None, validation_alias="AWS_DEFAULT_REGION")
    # boto3's own retry settings, read here only to give them our defaults when unset.
    # No upper bound: MNIST_DEADLINE_S ends the retries of one operation, as boto3 does not.
    aws_max_attempts: int = Field(4, ge=1, validation_alias="AWS_MAX_ATTEMPTS")
    aws_retry_mode: Literal["standard", "adaptive", "legacy"] = Field(
        "standard", validation_alias="AWS_RETRY_MODE")
    # Ours: the longest one store operation may take, its retries included; a mirror download
    # must show a minimum rate once this much time has passed (see tasks/fetch.py).
    deadline_s: float = Field(20.0, gt=0, le=3600, validation_alias="MNIST_DEADLINE_S")
    s3_public_url: str | None = Field(None, validation_alias="MNIST_S3_PUBLIC_URL")
    notify_urls: Annotated[tuple[SecretStr, ...], NoDecode] = Field((), validation_alias="MNIST_NOTIFY_URL")
    notify_on: Literal["problems", "all"] = Field("problems", validation_alias="MNIST_NOTIFY_ON")
    dask_address: str | None = Field(None, validation_alias="MNIST_DASK_ADDRESS")
    keep_last: int | None = Field(None, ge=1, validation_alias="MNIST_KEEP_LAST")
    min_class_recall: float | None = Field(None, ge=0.0, le=1.0, validation_alias="MNIST_MIN_CLASS_RECALL")

    @field_validator("mirrors", mode="before")
    @classmethod
    def _split_mirrors(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        if not value:
            raise ValueError("needs at least one mirror URL or folder")
        return value

    @field_validator("notify_urls", mode="before")
    @classmethod
    def _split_notify(cls, value: object) -> object:
        # Apprise URLs often carry a token or password: held as secrets, never echoed.
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("keep_last", "dask_address", "s3_public_url", "aws_default_region", "min_class_recall",
                     mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("notify_on", mode="before")
    @classmethod
    def _empty_is_problems(cls, value: object) -> object:
        return "problems" if isinstance(value, str) and not value.strip() else value

    @field_validator("aws_default_region")
    @classmethod
    def _check_region(cls, value: str | None) -> str | None:
        # botocore's own rule for a region name; checked here so that a typo is this one line
        # naming the variable, not "unexpected InvalidRegionError" at the first request
        if value and not re.fullmatch(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", value):
            raise ValueError("must be a region name such as us-east-1 (letters, digits and '-')")
        return value

    @field_validator("dask_address")
    @classmethod
    def _check_dask(cls, value: str | None) -> str | None:
        # A host name, an IPv4 address or a bracketed IPv6 one; a port of 1-65535 ('tcp://[::1' and
        # port 99999 passed, to fail after the run had started)
        match = re.fullmatch(r"(tcp|tls|ucx)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?", value or "")
        if value and not (match and (match[3] is None or 0 < int(match[3]) < 65536)):
            raise ValueError("must look like tcp://HOST:PORT")
        return value

    @field_validator("store_url")
    @classmethod
    def _check_store_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("is empty")
        if value.startswith("s3://"):
            if _has_userinfo(value):  # user info, never echoed: it may be a key and its secret
                raise ValueError(_CREDENTIALS)
            bucket = value[5:].split("/", 1)[0]
            problem = bucket_name_problem(bucket)
            if problem:
                # Echoed only when made of name characters: `KEY:SEC/RET@b` leaves `KEY:SEC` here.
                shown = f"{bucket!r} " if re.fullmatch(r"[\w.-]*", bucket) else ""
                raise ValueError(f"bucket name {shown}is not a valid S3 bucket name: it {problem}")
            prefix = value[5:].partition("/")[2].removesuffix("/")
            if prefix and _prefix_problem(prefix):
                # Keys would hold them literally ("runs/../x"); clients that normalise paths (browsers,
                # `aws s3`) then ask for other keys. The URL is not echoed: it may carry user info.
                raise ValueError("the prefix after the bucket must not have '.', '..' or empty ('a//b') "
                                 "segments: write s3://BUCKET/SOME/PREFIX")
            if _URL_UNSAFE.search(prefix):
                raise ValueError("the prefix after the bucket must not hold '?', '#', '%', '\\', spaces or "
                                 "control characters (links and URL clients read them apart): write "
                                 "s3://BUCKET/SOME/PREFIX")
        elif "://" in value or _SCHEME_LIKE.match(value):
            raise ValueError("must be s3://BUCKET[/PREFIX] or a local folder path")
        elif value.startswith("~"):
            try:
                Path(value).expanduser()
            except RuntimeError:  # `~name/...` for a user this machine does not have
                raise ValueError("starts with a home folder ('~...') this machine cannot find: give the "
                                 "folder's full path") from None
        return value

    @field_validator("aws_endpoint_url_s3", "s3_public_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        # Refused, not stripped: boto3 signs with the AWS keys and never sends user info, so it would
        # be silently unused here, and presigned links (reports, the dashboard) would carry it.
        if value and _has_userinfo(value):
            raise ValueError(_CREDENTIALS)
        return value or None

    @property
    def is_s3(self) -> bool:
        return self.store_url.startswith("s3://")

    def local_store_path(self) -> Path:
        return Path(self.store_url).expanduser().resolve()


def _names(alias: str | AliasChoices) -> list[str]:
    return [alias] if isinstance(alias, str) else list(alias.choices)


# A setting's variables, by its field name and by its first variable (what an error's loc holds).
_ENV_NAMES = {key: _names(field.validation_alias) for name, field in Settings.model_fields.items()
              for key in (name, _names(field.validation_alias)[0])}


def _env_name(loc: str) -> str:
    """The variable an error is about: of a setting's names (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL),
    the first one set, as they are read."""
    names = _ENV_NAMES.get(loc, [loc])
    return next((name for name in names if os.environ.get(name)), names[0])  # an empty one is unset


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; a bad value is a one-line ConfigError naming the variable."""
    if not {"store_url", "MNIST_STORE_URL"} & overrides.keys() and os.environ.get("MNIST_STORE_URL") == "":
        # Not taken for unset: an empty store URL is most often `s3://$BUCKET` gone wrong, and the
        # default folder would take the runs that belong in the bucket.
        raise ConfigError("MNIST_STORE_URL is invalid: is empty; give s3://BUCKET[/PREFIX] or a folder, "
                          "or unset it for the default folder")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = str(err["loc"][0]) if err["loc"] else "?"
        name = _env_name(loc)
        # Never echo the input: it may be a credential.
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{name} is invalid: {msg}; fix it in the environment") from None
