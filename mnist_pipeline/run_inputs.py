"""What a run's model depends on, compared with production's run: the dataset versions it learns
from (with their hashes), the code (the git commit where there is one, and the SHA-256 of the
pipeline's own source files, which tells versions apart in the Docker image, where there is no
.git), the libraries that decide what is learned, and the parameters.

`--skip-unchanged` ends a run whose list of differences is empty; the report shows the list."""

from __future__ import annotations

from typing import Any

# The versions themselves are compared; whether to skip is not an input.
NOT_INPUTS = ("skip_unchanged", "data_version")
CODE = (("git_commit", "commit"), ("source_sha256", "source files"))


def _short(value: Any) -> str:
    return "none" if value is None else (value[:12] if isinstance(value, str) and len(value) >= 40 else str(value))


def ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 5] -> "versions 1-3, 5"; [4] -> "version 4"."""
    parts, run = [], []
    for n in sorted(numbers):
        if run and n != run[-1] + 1:
            parts.append(run)
            run = []
        run.append(n)
    parts.append(run)
    text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in parts)
    return f"version{'s' if len(numbers) > 1 else ''} {text}"


def data_differences(mine: list[dict], theirs: list[dict]) -> list[str]:
    ours, production = ({v["version"]: v for v in refs} for refs in (mine, theirs))
    out = []
    added = sorted(set(ours) - set(production))
    if added:
        train = sum(ours[n].get("train", 0) for n in added)
        out.append(f"data: {ranges(added)} added ({train:,} training images)")
    dropped = sorted(set(production) - set(ours))
    if dropped:
        out.append(f"data: {ranges(dropped)} no longer used")
    replaced = sorted(n for n in set(ours) & set(production) if ours[n]["sha256"] != production[n]["sha256"])
    if replaced:
        out.append(f"data: {ranges(replaced)} hold{'' if len(replaced) > 1 else 's'} other images than production's "
                   "run saw")
    return out


def differences(run: dict, production: dict | None) -> list[str]:
    """What differs between `run` (data_versions, git_commit, source_sha256, versions,
    parameters) and production's run manifest, one phrase each, production's value first; empty
    when this run would learn what production's run learned. A manifest written before these
    were recorded differs in what it lacks (its runs learned from MNIST alone)."""
    if production is None:
        return ["no model in production"]
    out = data_differences(run.get("data_versions") or [], production.get("data_versions") or [])
    for key, name in CODE:
        if run.get(key) != production.get(key):
            out.append(f"code: {name} {_short(production.get(key))} → {_short(run.get(key))}")
    theirs_lib, ours_lib = production.get("versions") or {}, run.get("versions") or {}
    for name in sorted(set(theirs_lib) | set(ours_lib)):
        if theirs_lib.get(name) != ours_lib.get(name):
            out.append(f"library: {name} {theirs_lib.get(name, 'none')} → {ours_lib.get(name, 'none')}")
    theirs_p, ours_p = production.get("parameters") or {}, run.get("parameters") or {}
    for name in sorted((set(theirs_p) | set(ours_p)) - set(NOT_INPUTS)):
        if theirs_p.get(name) != ours_p.get(name):
            out.append(f"parameter: {name} {theirs_p.get(name)} → {ours_p.get(name)}")
    return out
