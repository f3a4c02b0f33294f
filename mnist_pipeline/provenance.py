"""What a manifest records about where a run came from (never credentials)."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("tensorflow-cpu", "keras", "numpy", "prefect", "boto3", "pydantic", "matplotlib")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def provenance(started_at: str) -> dict:
    """Where a run came from, as its manifest and report record it."""
    from mnist_pipeline.dataset import MNIST_SHA256

    return {"git_commit": git_commit(), "source_sha256": source_sha256(), "versions": package_versions(),
            "dataset_sha256": MNIST_SHA256, "started_at": started_at}


SOURCE_FOLDERS = ("mnist_pipeline", "tasks", "flows")  # the pipeline's own code, templates included
SOURCE_SUFFIXES = (".py", ".j2")


def source_sha256(root: Path | None = None) -> str:
    """SHA-256 over the pipeline's own source files under `root` (this checkout or installation by
    default), their paths and bytes in path order: the code's version where there is no git
    checkout (the Docker image has no .git)."""
    root = root or Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    files = sorted(p for folder in SOURCE_FOLDERS for p in (root / folder).rglob("*")
                   if p.suffix in SOURCE_SUFFIXES and p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
        # --no-optional-locks: a run killed during `git status` must not leave .git/index.lock
        # behind (it did, from the SIGKILL fault tests, and blocked every later commit).
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
