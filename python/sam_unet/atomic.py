"""Atomic file writes: a temporary file in the target's folder, renamed over it on success.

A failure at any point (an exception, an interrupted write) removes the temporary file and
leaves any previous file at the target untouched, so no partial output is ever visible. A process
killed outright (SIGKILL, power loss) cannot clean up: its temporary file stays behind as a hidden
file named ``.<target>.samtmp-<pid>-<host>.<random>.tmp<suffix>``; :func:`sweep_stale_temps`
removes such leftovers of dead writers, and input listings skip hidden files.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TEMP_MARK = "samtmp"
_TEMP_RE = re.compile(
    r"^\.(?P<target>.+)\." + TEMP_MARK + r"-(?P<pid>\d+)-(?P<host>[0-9a-f]{6})\."
    r"[a-z0-9_]{8}\.tmp(?:\.[A-Za-z0-9.]+)?$"
)
# A leftover from another machine (shared output folder under multi-node torchrun) is only
# removed when it is this much older than the sweeping run: its writer's liveness is unknown.
FOREIGN_TEMP_AGE_S = 3600.0


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def host_tag() -> str:
    """6 hex digits naming this machine in temporary file names."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; write it inside the block.

    On success the file gets the permissions a plain ``open(path, "w")`` would give (mkstemp
    creates 0600 files) and is renamed onto ``path``. ``suffix`` lets writers that infer the
    format from the name (nibabel: ``.nii.gz``) see the right extension; it must start with
    ``.tmp``. The temporary name carries this process's id and host so that a later run can
    tell a dead writer's leftover from a live one (:func:`sweep_stale_temps`).
    """
    if not suffix.startswith(".tmp"):
        raise ValueError(f"temporary suffix must start with '.tmp', got {suffix!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    stem = target.name[:100]  # keeps the temporary name within the 255-byte limit
    prefix = f".{stem}.{TEMP_MARK}-{os.getpid()}-{host_tag()}."
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


@dataclass(frozen=True)
class TempName:
    """What a temporary file's name says: the target's name (maybe cut), writer pid and host."""

    target: str
    pid: int
    host: str


def parse_temp_name(name: str) -> TempName | None:
    """The parts of a name made by :func:`atomic_path`, or None for any other name."""
    m = _TEMP_RE.match(name)
    if m is None:
        return None
    return TempName(m.group("target"), int(m.group("pid")), m.group("host"))


def is_temp_name(name: str) -> bool:
    """True for names made by :func:`atomic_path`."""
    return parse_temp_name(name) is not None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True
    return True


def sweep_stale_temps(folder: str | os.PathLike, *, older_than: float) -> list[Path]:
    """Remove leftovers of killed writers in ``folder``; returns the removed paths.

    Removed: regular files whose name is exactly this module's temporary pattern, last
    modified before ``older_than`` (a ``time.time()`` value, e.g. the start of the run), whose
    writer on this host is no longer running (or, written on another host, more than
    :data:`FOREIGN_TEMP_AGE_S` older than ``older_than``). Nothing else is touched.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    here = host_tag()
    for entry in os.scandir(folder):
        info = parse_temp_name(entry.name)
        if info is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if mtime >= older_than:
            continue
        if info.host == here:
            if _pid_alive(info.pid):
                continue
        elif mtime >= older_than - FOREIGN_TEMP_AGE_S:
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(Path(entry.path))
    return removed


def write_bytes_atomic(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))
