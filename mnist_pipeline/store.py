"""Artifact store: one small interface, two backends (S3 via boto3, a local folder).

Keys are the same on both ("runs/<id>/model.keras"). Every write is all-or-nothing: S3 PUTs are
atomic, the local backend writes a temporary file and renames it (and removes it on any failure).
Conditional writes are what the registry relies on to never lose an update: create-only, and
replace-only-if-unchanged (ETag).

Every failure leaves as one of three errors (mnist_pipeline.errors): NotFoundInStore,
StoreUnavailable (transient: the endpoint did not answer within MNIST_DEADLINE_S, retries
included) or StoreError (permanent: credentials, permissions, a read-only or full disk).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mnist_pipeline.errors import (
    PERMANENT_ERRNOS,
    NotFoundInStore,
    PreconditionFailed,
    StoreError,
    StoreFull,
    StoreUnavailable,
    os_error_message,
)
from mnist_pipeline.files import NotARegularFile, current_umask, kind_of, read_regular
from mnist_pipeline.settings import Settings

log = logging.getLogger("mnist_pipeline.store")

TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".part"
STALE_TEMP_S = 3600  # a temporary file this old belongs to a writer that died
MIN_FREE_BYTES = 64 * 2**20  # a run writes ~15 MB the first time (dataset cache), ~3 MB later

# If-Match carries an ETag quoted (RFC 9110's entity-tag; AWS S3, MinIO and moto take it either
# way) or bare (all that Ceph's radosgw 16 takes). Each endpoint's form is learned on its first
# refusal and kept for the process: docs/registry.md.
IF_MATCH_FORMS = {"quoted": '"{}"', "bare": "{}"}
_if_match_form: dict[str | None, str] = {}  # S3 endpoint URL (None: AWS) -> the form it took


def check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/") or "\x00" in key:
        raise ValueError(f"invalid store key {key!r}")
    return key


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None  # S3's ETag from the listing; None on a folder store (not computed)
    modified: datetime


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
    def list_objects(self, prefix: str = "", skipped: list[str] | None = None) -> list[ObjectInfo]:
        """Objects under prefix, sorted by key. What is at a key but cannot be an object (a FIFO or
        a device in a folder store) is skipped with a warning, or, when `skipped` is a list, one
        line naming it is appended there instead."""

    @abstractmethod
    def list_children(self, prefix: str) -> list[str]:
        """Names of the "folders" under the folder `prefix` ends in, starting with what follows
        its last '/' ("runs/" -> every run; "runs/5f3e" -> runs starting 5f3e), sorted: one S3
        listing with a delimiter, so 5,000 runs cost 5 requests, not one per file."""

    @abstractmethod
    def list_names(self, prefix: str, suffix: str, start_after: str | None = None) -> list[str]:
        """Keys under prefix that end in `suffix` (and contain it nowhere else), after
        `start_after`, sorted. Names only: on S3 this lists with `suffix` as the delimiter, so each
        key comes back as a short CommonPrefix instead of a full Contents entry (ETag, size,
        owner, date); a 1,000-key page costs a quarter as much on moto, less on the wire on S3."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; absent is fine."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        """Create only; PreconditionFailed when the key exists."""

    @abstractmethod
    def put_if_match(self, key: str, data: bytes, etag: str, content_type: str = "application/json") -> str:
        """Replace only if the current ETag is `etag`; PreconditionFailed otherwise."""

    @abstractmethod
    def link(self, key: str, expires_s: int = 7 * 24 * 3600) -> str | None:
        """A URL a browser can open (presigned on S3), or None for a folder store."""

    @abstractmethod
    def location(self, key: str) -> str:
        """Where the object is, for people: a path or s3://bucket/key."""

    @abstractmethod
    def probe_writable(self) -> None:
        """Write and remove a small object: StoreError now, in seconds, rather than after
        training."""

    def get(self, key: str) -> bytes:
        return self.get_with_etag(key)[0]

    def list(self, prefix: str = "") -> list[str]:
        return [info.key for info in self.list_objects(prefix)]

    def stale_temp_files(self) -> list[str]:
        """Temporary files left by writers that died (the folder backend has them)."""
        return []

    def clean_stale_temp(self) -> list[str]:
        removed = self.stale_temp_files()
        for key in removed:
            self.delete(key)
        return removed


# -- folder ---------------------------------------------------------------------------------------
class LocalStore(ArtifactStore):
    """A folder. Only regular files are objects: a FIFO or a device at a key is never opened for
    long (reading one would block, or never end), it is one line naming the key."""

    def __init__(self, root: Path, create: bool = True):
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)
        self._file_mode = 0o666 & ~current_umask()  # mkstemp's 0600 would hide runs from others
        if not create:  # reviewing a store never creates one where a path was mistyped
            if not self.root.is_dir():
                what = "not a folder" if self.root.exists() else "no such folder"
                raise StoreError(f"no store at {self.url}: {what}; check MNIST_STORE_URL (a training run "
                                 "creates the store)")
            return
        with self._os_errors("create the store folder"):
            self.root.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _os_errors(self, what: str):
        try:
            yield
        except (NotFoundInStore, PreconditionFailed):
            raise
        except OSError as exc:
            raise self._translate(exc, what) from None

    def _translate(self, exc: OSError, what: str) -> Exception:
        reason = os_error_message(exc)
        hint = {
            errno.ENOSPC: "free space on that disk, or run `mnist-pipeline gc`",
            errno.EDQUOT: "free space on that disk, or run `mnist-pipeline gc`",
            errno.EROFS: "set MNIST_STORE_URL to a writable folder",
            errno.EACCES: "give this user write access, or set MNIST_STORE_URL to another folder",
            errno.EPERM: "give this user write access, or set MNIST_STORE_URL to another folder",
        }.get(exc.errno, "check the store folder")
        problem = f"cannot {what} in the store {self.url}: {reason}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreFull(problem, hint)
        message = f"{problem}; {hint}"
        return StoreError(message) if exc.errno in PERMANENT_ERRNOS else StoreUnavailable(message)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _read(self, key: str) -> bytes:
        try:
            return read_regular(self._path(key))
        except NotARegularFile as exc:
            raise StoreError(self.not_regular_problem(key, exc.strerror)) from None

    def not_regular_problem(self, key: str, what: str) -> str:
        return f"{key} in the store {self.url} is {what}; remove it (the pipeline writes only regular files)"

    def _write_temp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), self._file_mode)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)  # no debris: a full disk stays no fuller
            raise
        return Path(tmp)

    @contextlib.contextmanager
    def _temp_for(self, path: Path, data: bytes):
        tmp = self._write_temp(path, data)
        try:
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)  # gone already when it was renamed into place

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
        with self._os_errors(f"write {key}"), self._temp_for(path, data) as tmp:
            os.replace(tmp, path)
        return _etag(data)

    def get_with_etag(self, key):
        with self._os_errors(f"read {key}"):
            try:
                data = self._read(key)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                # A folder or a dangling link at the key is not "no object": a conditional create
                # would fail on it forever (seen as "production kept changing")
                what = self._occupied_by(key)
                if what:
                    raise StoreError(self.not_regular_problem(key, what)) from None
                raise NotFoundInStore(f"{key} not found in {self.url}") from None
        return data, _etag(data)

    def _occupied_by(self, key: str) -> str | None:
        """What holds a key's path that is not a file: a folder or a link to nothing; None if nothing."""
        path = self._path(key)
        if path.is_symlink() and not path.exists():
            return "a symbolic link to nothing, not a regular file"
        return "a folder, not a regular file" if path.is_dir() else None

    def exists(self, key):
        return self._path(key).is_file()

    def list_objects(self, prefix="", skipped=None):
        head = prefix.rpartition("/")[0]
        base = self.root / head if head else self.root
        found = []
        with self._os_errors(f"list {prefix or '/'}"):
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = Path(dirpath).relative_to(self.root).as_posix()
                for name in filenames:
                    key = name if rel == "." else f"{rel}/{name}"
                    if name.startswith(".") or not key.startswith(prefix):
                        continue
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                        what = None if stat.S_ISREG(st.st_mode) else f"{kind_of(st.st_mode)}, not a regular file"
                    except FileNotFoundError:  # a link to nothing (or a file deleted meanwhile)
                        if not os.path.islink(os.path.join(dirpath, name)):
                            continue
                        what = "a symbolic link to nothing, not a regular file"
                    if what:
                        if skipped is None:
                            log.warning("skipped %s: %s", key, what)
                        else:
                            skipped.append(self.not_regular_problem(key, what))
                        continue
                    found.append(ObjectInfo(key, st.st_size, None,
                                            datetime.fromtimestamp(st.st_mtime, timezone.utc)))
        return sorted(found, key=lambda info: info.key)

    def list_names(self, prefix, suffix, start_after=None):
        return [info.key for info in self.list_objects(prefix)
                if info.key.endswith(suffix) and info.key.count(suffix) == 1
                and (start_after is None or info.key > start_after)]

    def list_children(self, prefix):
        parent, _, start = prefix.rpartition("/")
        with self._os_errors(f"list {prefix}"):
            try:
                return sorted(e.name for e in os.scandir(self.root / parent)
                              if e.is_dir() and e.name.startswith(start) and not e.name.startswith("."))
            except FileNotFoundError:
                return []

    def delete(self, key):
        with self._os_errors(f"delete {key}"):
            self._path(key).unlink(missing_ok=True)

    def put_if_absent(self, key, data, content_type="application/json"):
        path = self._path(key)
        with self._os_errors(f"create {key}"), self._temp_for(path, data) as tmp:
            try:
                os.link(tmp, path)  # atomic create-only
            except FileExistsError:
                raise PreconditionFailed(f"{key} already exists") from None
        return _etag(data)

    def put_if_match(self, key, data, etag, content_type="application/json"):
        path = self._path(key)
        with self._os_errors(f"replace {key}"), self._lock():
            try:
                current = _etag(self._read(key))
            except FileNotFoundError:
                raise PreconditionFailed(f"{key} no longer exists") from None
            if current != etag:
                raise PreconditionFailed(f"{key} changed since it was read")
            with self._temp_for(path, data) as tmp:
                os.replace(tmp, path)
        return _etag(data)

    def link(self, key, expires_s=0):
        return None  # a file:// link does not open from the Prefect UI's http page

    def location(self, key):
        return str(self._path(key))

    def probe_writable(self):
        with self._os_errors("write a test file"):
            probe = self.root / f".probe-{uuid.uuid4().hex}"
            try:
                probe.write_bytes(b"probe")
            finally:
                probe.unlink(missing_ok=True)
            free = shutil.disk_usage(self.root).free
        if free < MIN_FREE_BYTES:
            raise StoreError(f"the store {self.url} has only {free / 2**20:.1f} MB free, a run needs "
                             f"{MIN_FREE_BYTES // 2**20} MB; free space or run `mnist-pipeline gc`")
        self.clean_stale_temp()

    def stale_temp_files(self):
        cutoff, stale = time.time() - STALE_TEMP_S, []
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                    path = Path(dirpath) / name
                    with contextlib.suppress(OSError):
                        if path.stat().st_mtime < cutoff:
                            stale.append(path.relative_to(self.root).as_posix())
        return stale

    def clean_stale_temp(self):
        stale = self.stale_temp_files()
        for key in stale:
            with contextlib.suppress(OSError):
                (self.root / key).unlink()
        return stale


def _etag(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def file_record(data: bytes) -> dict:
    """What a manifest records of each file: SHA-256 (what integrity checks use), size, and MD5
    (an S3 listing's ETag for a single-part upload: lets `verify` check content without GETs)."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "md5": _etag(data), "bytes": len(data)}


# -- S3 -------------------------------------------------------------------------------------------
class _DeadlineExceeded(Exception):
    def __init__(self, attempts: int, last_error: str):
        super().__init__(last_error)
        self.attempts, self.last_error = attempts, last_error


class _Deadlines:
    """botocore event hooks: a warning line on every retry, and no attempt started once the
    operation's deadline (retries included) has passed. botocore itself bounds each attempt
    (connect and read timeouts) and decides what is worth retrying (its standard mode)."""

    def __init__(self, deadline_s: float, max_attempts: int):
        self.deadline_s, self.max_attempts = deadline_s, max_attempts

    def register(self, events) -> None:
        events.register("before-call.s3", self.start)
        events.register("needs-retry.s3", self.note_failure)
        events.register("request-created.s3", self.before_attempt)

    def start(self, model, params, context, **_):
        context["mnist"] = {"deadline": time.monotonic() + self.deadline_s, "last_error": "",
                            "what": f"{model.name} {params.get('Key') or params.get('Prefix') or ''}".strip()}

    def note_failure(self, request_dict, caught_exception=None, response=None, attempts=1, **_):
        state = request_dict.get("context", {}).get("mnist")
        if state is None:
            return None
        if caught_exception is not None:
            state["last_error"] = type(caught_exception).__name__
        elif response is not None and (response[0].status_code >= 500 or response[0].status_code == 429):
            state["last_error"] = f"HTTP {response[0].status_code}"
        else:
            # An answer (a 200, a 404, a refused condition) is final however late it came: it was
            # once turned into "did not answer" when a slow machine took the deadline to get it.
            return None
        if time.monotonic() > state["deadline"]:
            raise _DeadlineExceeded(attempts, state["last_error"])
        return None  # no opinion: botocore's retry handler decides

    def before_attempt(self, request, **_):
        state = request.context.get("mnist")
        attempt = request.context.get("retries", {}).get("attempt", 1)
        if state is None or attempt <= 1:
            return
        if time.monotonic() > state["deadline"]:
            raise _DeadlineExceeded(attempt - 1, state["last_error"])
        log.warning("S3 endpoint not answering (%s), attempt %d/%d: %s", state["last_error"] or "error",
                    attempt, self.max_attempts, state["what"])


class S3Store(ArtifactStore):
    """Any S3 endpoint (AWS, MinIO, Ceph radosgw, moto). botocore retries (AWS_MAX_ATTEMPTS,
    AWS_RETRY_MODE) within MNIST_DEADLINE_S per operation; each attempt has its own connect and
    read timeouts."""

    def __init__(self, settings: Settings, create: bool = True):
        rest = settings.store_url[len("s3://"):]
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = settings.store_url
        self.deadline_s = settings.deadline_s
        self._settings = settings
        self._client = self._make_client(settings.aws_endpoint_url_s3, settings.aws_max_attempts)
        _Deadlines(settings.deadline_s, settings.aws_max_attempts).register(self._client.meta.events)
        self._public = None  # a second client, for links signed for the browser's endpoint
        self._ensure_bucket(create)

    def _make_client(self, endpoint: str | None, max_attempts: int):
        import boto3
        from botocore.config import Config

        s = self._settings
        per_attempt = max(1.0, s.deadline_s / 4)  # so that a few attempts fit in the deadline
        return boto3.client(
            "s3", endpoint_url=endpoint, region_name=s.aws_default_region or "us-east-1",
            aws_access_key_id=s.aws_access_key_id.get_secret_value() if s.aws_access_key_id else None,
            aws_secret_access_key=(s.aws_secret_access_key.get_secret_value()
                                   if s.aws_secret_access_key else None),
            config=Config(
                # total_max_attempts counts the first attempt, as AWS_MAX_ATTEMPTS does; botocore's
                # max_attempts counts only the retries (AWS_MAX_ATTEMPTS=4 made 5 attempts).
                retries={"total_max_attempts": max_attempts, "mode": s.aws_retry_mode},
                connect_timeout=min(5.0, per_attempt), read_timeout=per_attempt,
                s3={"addressing_style": "path"},
                signature_version="s3v4",  # presigned URLs too (MinIO and new AWS regions need v4)
            ))

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
        except _DeadlineExceeded as exc:
            raise StoreUnavailable(
                f"{what}: the S3 endpoint did not answer within {self.deadline_s:g} s "
                f"({exc.attempts} attempts, last: {exc.last_error or 'no answer'}); check "
                "AWS_ENDPOINT_URL_S3 and that the server is up") from None
        except NoCredentialsError:
            raise StoreError(f"{what}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY") from None
        except (BotoConnectionError, ReadTimeoutError) as exc:
            raise StoreUnavailable(f"{what}: S3 endpoint not answering ({type(exc).__name__}); "
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
            return StoreError(f"{what}: S3 refused the credentials or the permission ({code}); "
                              "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the user's policy")
        if code == "NoSuchBucket":
            return StoreError(f"{what}: bucket {self.bucket!r} does not exist")
        if code in {"SlowDown", "Throttling", "RequestTimeout"} or (status and status >= 500):
            return StoreUnavailable(f"{what}: S3 server error {status} ({code})")
        return StoreError(f"{what}: S3 error {code or status}")

    def _ensure_bucket(self, create: bool) -> None:
        from botocore.exceptions import ClientError

        with self._errors(f"bucket {self.bucket}"):
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
                    raise
            if not create:  # as for a folder: a mistyped bucket is not made into an empty store
                raise StoreError(f"no store at {self.url}: bucket {self.bucket!r} does not exist; check "
                                 "MNIST_STORE_URL (a training run creates the bucket)")
            kwargs = {"Bucket": self.bucket}
            region = self._settings.aws_default_region or "us-east-1"
            if region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self._client.create_bucket(**kwargs)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code not in {"BucketAlreadyOwnedByYou"}:
                    raise StoreError(f"bucket {self.bucket!r} is missing and could not be created "
                                     f"({code}); create it or grant s3:CreateBucket") from None

    # -- interface ------------------------------------------------------------------------------
    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

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

    def _pages(self, what: str, **kwargs):
        with self._errors(what):
            yield from self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, **kwargs)

    def list_objects(self, prefix="", skipped=None):  # every S3 key is an object
        found = []
        for page in self._pages(f"list {prefix or '/'}", Prefix=self.prefix + prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):  # a console's "folder" marker, not an object
                    continue
                found.append(ObjectInfo(obj["Key"][len(self.prefix):], obj["Size"],
                                        obj["ETag"].strip('"'), obj["LastModified"]))
        return sorted(found, key=lambda info: info.key)

    def list_names(self, prefix, suffix, start_after=None):
        names = []
        extra = {"StartAfter": self.prefix + start_after} if start_after else {}
        for page in self._pages(f"list {prefix}", Prefix=self.prefix + prefix, Delimiter=suffix, **extra):
            names += [p["Prefix"][len(self.prefix):] for p in page.get("CommonPrefixes", [])]
        return sorted(n for n in names if n.endswith(suffix))

    def list_children(self, prefix):
        names = []
        parent = self.prefix + prefix.rpartition("/")[0] + "/"
        for page in self._pages(f"list {prefix}", Prefix=self.prefix + prefix, Delimiter="/"):
            names += [p["Prefix"][len(parent):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)

    def delete(self, key):
        with self._errors(f"delete {key}"):
            self._client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def put_if_absent(self, key, data, content_type="application/json"):
        with self._errors(f"create {key}"):
            resp = self._client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data,
                                           ContentType=content_type, IfNoneMatch="*")
        return resp["ETag"].strip('"')

    def put_if_match(self, key, data, etag, content_type="application/json"):
        """A refusal while the object still has `etag` was about the ETag's form, not a race: the
        write is sent once more in the other form (still conditional: the server checks it), and
        the form that worked is kept for this endpoint."""
        endpoint = self._settings.aws_endpoint_url_s3
        form = _if_match_form.get(endpoint, "quoted")
        try:
            return self._put_if_match(key, data, etag, form, content_type)
        except PreconditionFailed:
            if self._current_etag(key) != etag:
                raise  # a lost race: the object changed, or went away, since it was read
        other = "bare" if form == "quoted" else "quoted"
        try:
            new_etag = self._put_if_match(key, data, etag, other, content_type)
        except PreconditionFailed:
            if self._current_etag(key) == etag:
                raise StoreError(f"replace {key}: the S3 server refuses If-Match with the object's own "
                                 "ETag, quoted or bare, so it cannot make conditional writes; use AWS "
                                 "S3, MinIO or Ceph radosgw") from None
            raise
        _if_match_form[endpoint] = other
        log.info("S3 endpoint %s takes If-Match ETags %s", endpoint or "AWS", other)
        return new_etag

    def _put_if_match(self, key, data, etag, form, content_type):
        try:
            with self._errors(f"replace {key}"):
                resp = self._client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data,
                                               ContentType=content_type,
                                               IfMatch=IF_MATCH_FORMS[form].format(etag))
        except NotFoundInStore:  # AWS answers 404 when the object went away: also a lost race
            raise PreconditionFailed(f"{key} no longer exists") from None
        return resp["ETag"].strip('"')

    def _current_etag(self, key) -> str | None:
        try:
            with self._errors(f"head {key}"):
                return self._client.head_object(Bucket=self.bucket, Key=self._k(key))["ETag"].strip('"')
        except NotFoundInStore:
            return None

    def link(self, key, expires_s=7 * 24 * 3600):
        """Presigned for MNIST_S3_PUBLIC_URL when set: the endpoint as a browser reaches it
        (http://localhost:9000 in compose), not the one this process uses (http://minio:9000)."""
        public = self._settings.s3_public_url
        if public and self._public is None:
            self._public = self._make_client(public, 1)
        client = self._public or self._client
        with self._errors(f"presign {key}"):
            return client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._k(key)}, ExpiresIn=expires_s)

    def location(self, key):
        return f"s3://{self.bucket}/{self._k(key)}"

    def probe_writable(self):
        key = f".probe-{uuid.uuid4().hex}"
        self.put(key, b"probe")
        self.delete(key)


def open_store(settings: Settings, create: bool = True) -> ArtifactStore:
    """`create=False`: a missing store folder or bucket is an error, not created."""
    if settings.is_s3:
        return S3Store(settings, create)
    return LocalStore(settings.local_store_path(), create)
