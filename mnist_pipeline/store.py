"""Artifact store: one small interface, two backends (S3 via boto3, a local folder).

Keys are the same on both ("runs/<id>/model.keras"). Every write is all-or-nothing: S3 PUTs are
atomic, the local backend writes a temporary file and renames it. Conditional writes are what the
registry relies on to never lose an update: create-only, and replace-only-if-unchanged (ETag).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from mnist_pipeline.errors import (
    NotFoundInStore,
    PreconditionFailed,
    StoreError,
    StoreUnavailable,
)
from mnist_pipeline.settings import Settings


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"invalid store key {key!r}")
    return key


class ArtifactStore(ABC):
    """What the pipeline, the registry and the CLI use; none of them knows the backend."""

    url: str

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Write (replace) an object; returns its ETag."""

    @abstractmethod
    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """Read an object and its ETag; NotFoundInStore when absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under prefix, sorted."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        """Create only; PreconditionFailed when the key exists."""

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, etag: str, content_type: str = "application/json") -> str:
        """Replace only if the current ETag is `etag`; PreconditionFailed otherwise."""

    @abstractmethod
    def link(self, key: str, expires_s: int = 7 * 24 * 3600) -> str:
        """A URL a person can open: presigned for S3, file:// for a folder."""

    def get(self, key: str) -> bytes:
        return self.get_with_etag(key)[0]


class LocalStore(ArtifactStore):
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store folder {self.root}: {exc.strerror}; "
                             "set MNIST_STORE_URL to a writable folder") from None
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _write_temp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return Path(tmp)

    @contextlib.contextmanager
    def _lock(self):
        # One lock for conditional writes: they are rare (registry only) and must be serialised
        # between processes sharing the folder.
        with open(self.root / ".conditional-write.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def put(self, key, data, content_type="application/octet-stream"):
        path = self._path(key)
        os.replace(self._write_temp(path, data), path)
        return _etag(data)

    def get_with_etag(self, key):
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFoundInStore(f"{key} not found in {self.url}") from None
        return data, _etag(data)

    def exists(self, key):
        return self._path(key).is_file()

    def list(self, prefix=""):
        base = self.root
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def put_if_absent(self, key, data, content_type="application/json"):
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic create-only
        except FileExistsError:
            raise PreconditionFailed(f"{key} already exists") from None
        finally:
            tmp.unlink(missing_ok=True)
        return _etag(data)

    def put_if_match(self, key, data, etag, content_type="application/json"):
        path = self._path(key)
        with self._lock():
            try:
                current = _etag(path.read_bytes())
            except FileNotFoundError:
                raise PreconditionFailed(f"{key} no longer exists") from None
            if current != etag:
                raise PreconditionFailed(f"{key} changed since it was read")
            os.replace(self._write_temp(path, data), path)
        return _etag(data)

    def link(self, key, expires_s=0):
        return self._path(key).as_uri()


def _etag(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class S3Store(ArtifactStore):
    """Any S3 endpoint (AWS, MinIO, moto). botocore's standard retry mode absorbs brief outages."""

    def __init__(self, settings: Settings, *, max_attempts: int = 4):
        import boto3
        from botocore.config import Config

        rest = settings.store_url[len("s3://"):]
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = settings.store_url
        secret = settings.aws_secret_access_key
        key_id = settings.aws_access_key_id
        self._region = settings.aws_default_region or "us-east-1"
        self._client = boto3.client(
            "s3",
            endpoint_url=settings.aws_endpoint_url_s3,
            region_name=self._region,
            aws_access_key_id=key_id.get_secret_value() if key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path"},
                signature_version="s3v4",  # presigned URLs too (MinIO and new AWS regions need v4)
            ),
        )
        self._ensure_bucket()

    # -- errors ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, what: str):
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError as BotoConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        try:
            yield
        except ClientError as exc:
            raise self._translate(exc, what) from None
        except NoCredentialsError:
            raise StoreError(f"{what}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY") from None
        except (BotoConnectionError, ReadTimeoutError) as exc:
            raise StoreUnavailable(f"{what}: S3 endpoint unreachable ({type(exc).__name__}); "
                                   "check AWS_ENDPOINT_URL_S3 and that the server is up") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"{what}: {type(exc).__name__}") from None

    def _translate(self, exc, what: str) -> Exception:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in {"NoSuchKey", "404", "NotFound"}:
            return NotFoundInStore(f"{what}: not found")
        # Some MinIO releases answer a refused conditional PUT with another code
        # (minio/minio#19442): any refusal of a conditional write is a lost race.
        if code in {"PreconditionFailed", "ConditionalRequestConflict"} or status in (409, 412):
            return PreconditionFailed(f"{what}: refused, the object changed concurrently")
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}:
            return StoreError(f"{what}: S3 refused the credentials ({code}); check "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if code == "NoSuchBucket":
            return StoreError(f"{what}: bucket {self.bucket!r} does not exist")
        if status and status >= 500:
            return StoreUnavailable(f"{what}: S3 server error {status} ({code})")
        return StoreError(f"{what}: S3 error {code or status}")

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        with self._errors(f"bucket {self.bucket}"):
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
                    raise
            kwargs = {"Bucket": self.bucket}
            if self._region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
            try:
                self._client.create_bucket(**kwargs)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code not in {"BucketAlreadyOwnedByYou"}:
                    raise StoreError(f"bucket {self.bucket!r} is missing and could not be created "
                                     f"({code}); create it or grant s3:CreateBucket") from None

    # -- interface ------------------------------------------------------------------------------
    def _k(self, key: str) -> str:
        return self.prefix + _check_key(key)

    def put(self, key, data, content_type="application/octet-stream"):
        with self._errors(f"put {key}"):
            resp = self._client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data,
                                           ContentType=content_type)
        return resp["ETag"].strip('"')

    def get_with_etag(self, key):
        with self._errors(f"get {key}"):
            resp = self._client.get_object(Bucket=self.bucket, Key=self._k(key))
            return resp["Body"].read(), resp["ETag"].strip('"')

    def exists(self, key):
        try:
            with self._errors(f"head {key}"):
                self._client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except NotFoundInStore:
            return False

    def list(self, prefix=""):
        keys = []
        with self._errors(f"list {prefix}"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix)
            for page in pages:
                keys += [obj["Key"][len(self.prefix):] for obj in page.get("Contents", [])]
        return sorted(keys)

    def put_if_absent(self, key, data, content_type="application/json"):
        with self._errors(f"create {key}"):
            resp = self._client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data,
                                           ContentType=content_type, IfNoneMatch="*")
        return resp["ETag"].strip('"')

    def put_if_match(self, key, data, etag, content_type="application/json"):
        try:
            with self._errors(f"replace {key}"):
                resp = self._client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data,
                                               ContentType=content_type, IfMatch=f'"{etag}"')
        except NotFoundInStore:  # S3 answers 404 when the object went away: also a lost race
            raise PreconditionFailed(f"{key} no longer exists") from None
        return resp["ETag"].strip('"')

    def link(self, key, expires_s=7 * 24 * 3600):
        with self._errors(f"presign {key}"):
            return self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._k(key)},
                ExpiresIn=expires_s)


def open_store(settings: Settings) -> ArtifactStore:
    if settings.is_s3:
        return S3Store(settings)
    return LocalStore(settings.local_store_path())
