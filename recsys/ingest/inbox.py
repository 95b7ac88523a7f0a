"""Planning what to load: each file's format (checked before anything loads) and inbox listing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from recsys.errors import InputError
from recsys.ingest.detect import detect_format, get_format
from recsys.ingest.reader import DEFAULT_MAX_LINE_BYTES, check_readable, file_problem
from recsys.ingest.rows import Format


def plan_files(
    *,
    ratings: Sequence[Path] = (),
    metadata: Sequence[Path] = (),
    fmt: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> list[tuple[Path, Format]]:
    """Each file with its format, metadata first; fails before any loading on a bad file.

    Raises:
        InputError: a missing, unreadable or empty file, an unknown format, or a file whose
            content is not what its option says (ratings given as --metadata or vice versa).
    """
    plan: list[tuple[Path, Format]] = []
    for role, paths in (("metadata", metadata), ("ratings", ratings)):
        for path in map(Path, paths):
            check_readable(path)
            if fmt is not None:
                chosen = get_format(fmt)
            else:
                _, name = detect_format(path, max_line_bytes=max_line_bytes)
                chosen = get_format(name)
            if chosen.kind != role:
                raise InputError(
                    f"{path}: given as --{role} but it holds {chosen.kind} (format {chosen.name})"
                )
            plan.append((path, chosen))
    return plan


# Files that come with the datasets but hold nothing to load (MovieLens companions, notes).
_COMPANIONS = {
    "u.genre",
    "u.info",
    "u.occupation",
    "u.user",
    "users.dat",
    "links.csv",
    "genome-scores.csv",
    "genome-tags.csv",
}


def is_companion(path: Path) -> bool:
    """A file that comes with a dataset but holds nothing to load (README, u.genre, splits)."""
    name = path.name
    if (
        name in _COMPANIONS
        or name.startswith(("README", "."))
        or path.suffix.lower() in {".md", ".txt", ".html", ".pdf"}
    ):
        return True
    # MovieLens 100k's u1.base ... ub.test are splits of u.data: loading them adds nothing
    return name[:1] == "u" and name.endswith((".base", ".test"))


def _entries(directory: Path) -> list[Path]:
    """The inbox's files to load, sorted; InputError for an entry that is not a readable file.

    Sub-directories are skipped (an inbox may keep processed files in one) and dataset
    companions are ignored (:func:`is_companion`). Anything else that is not a regular file
    (a FIFO, a socket, a device, a symlink loop or a broken symlink) is refused with one line
    naming it, as an unknown format is: nothing in the inbox is silently left behind.
    """
    files: list[Path] = []
    for path in sorted(directory.iterdir()):
        if is_companion(path) or path.is_dir():
            continue
        problem = file_problem(path)
        if problem is not None:
            raise InputError(f"{path}: {problem}; remove it from the inbox or fix it")
        files.append(path)
    return files


def inbox_files(
    directory: Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> tuple[list[Path], list[Path]]:
    """The rating files and the metadata files of an inbox directory, sorted by name.

    Raises:
        InputError: the directory is missing, an entry is not a readable regular file, or a
            file in it has no known format.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such directory")
    ratings: list[Path] = []
    metadata: list[Path] = []
    for path in _entries(directory):
        kind, _ = detect_format(path, max_line_bytes=max_line_bytes)
        (ratings if kind == "ratings" else metadata).append(path)
    return ratings, metadata
