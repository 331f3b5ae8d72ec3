"""RUN/digests.json: the SHA-256 of folds.csv and pool.csv, recorded as they are written, checked before use.

folds.csv decides which images a fold trains, validates and tests on, so an
edited one (test rows moved into a labelled part) would train on the outer
test set without a word. Each digest is recorded *before* its file is put in
place, so a session killed in between leaves a digest without its file (the
file is made again), never a file without its digest; a file without one is
refused, like one whose digest differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from noisystudent import atomic, layout
from noisystudent.errors import RunFolderError

BLOCK = 1 << 20  # bytes hashed at a time: pool.csv may hold millions of rows


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recorded(run: Path) -> dict[str, str]:
    """The digests of RUN/digests.json ({} when there is none)."""
    path = Path(run) / layout.DIGESTS
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{path} cannot be read ({error}); restore it, or start a new run with --out.") from error
    if not isinstance(document, dict):
        raise RunFolderError(f"{path} is not a JSON object; restore it, or start a new run with --out.")
    return document


def record(run: Path, name: str, digest: str) -> None:
    """Record the SHA-256 of RUN/``name`` (call under the run folder's lock, before the file is put in place)."""
    document = {**recorded(run), name: digest}
    atomic.write_text(Path(run) / layout.DIGESTS, json.dumps(document, indent=2, sort_keys=True) + "\n")


def verify(run: Path, names: tuple[str, ...] = (layout.FOLDS, layout.POOL)) -> None:
    """Refuse any of RUN/``names`` that exists but whose digest is missing or differs."""
    digests = recorded(run)
    for name in names:
        path = Path(run) / name
        if not path.exists():
            continue
        if name not in digests:
            raise RunFolderError(f"{path} has no digest in {Path(run) / layout.DIGESTS} (an older noisystudent made the run, "
                                 "or the digest was removed), so it cannot be verified; start a new run with --out.")
        if file_sha256(path) != digests[name]:
            raise RunFolderError(f"{path} was changed after the run wrote it (its SHA-256 differs from the one in "
                                 f"{layout.DIGESTS}); restore it, or start a new run with --out.")
