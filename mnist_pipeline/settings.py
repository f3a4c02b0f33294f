"""The one settings object, read from the environment (names fixed by DESIGN.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mnist_pipeline.errors import ConfigError

DEFAULT_STORE_URL = "mnist-store"
PUBLIC_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

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

    @field_validator("mirrors", mode="before")
    @classmethod
    def _split_mirrors(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        if not value:
            raise ValueError("needs at least one mirror URL or folder")
        return value

    @field_validator("store_url")
    @classmethod
    def _check_store_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("is empty")
        if value.startswith("s3://"):
            bucket = value[5:].split("/", 1)[0]
            if not _BUCKET.match(bucket):
                raise ValueError(f"bucket name {bucket!r} is not a valid S3 bucket name")
        elif "://" in value:
            raise ValueError("must be s3://BUCKET[/PREFIX] or a local folder path")
        return value

    @field_validator("aws_endpoint_url_s3")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value or None

    @property
    def is_s3(self) -> bool:
        return self.store_url.startswith("s3://")

    def local_store_path(self) -> Path:
        return Path(self.store_url).expanduser().resolve()


_ENV_NAMES = {
    name: (field.validation_alias if isinstance(field.validation_alias, str)
           else field.validation_alias.choices[0])
    for name, field in Settings.model_fields.items()
}


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; a bad value is a one-line ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = str(err["loc"][0]) if err["loc"] else "?"
        name = _ENV_NAMES.get(loc, loc)
        # Never echo the input: it may be a credential.
        raise ConfigError(f"{name} is invalid: {err['msg']}; fix it in the environment or .env") from None
