"""The folder a run writes into: made with a clear error, held by one run at a time, cleaned of
what killed runs left, and its disk faults (full, read-only) told in one line.

``output_folder(path)`` is what every command that writes a folder does around its work:

* the folder is created; a path that is a file, under a file, or on a read-only
  disk gives a ``SatsegError`` that says so;
* a lock file (``.satseg.lock``, holding the pid) is taken with ``flock``, so a
  second run into the same folder stops at once with ``FolderBusy``; the kernel
  lets go of the lock when its process dies (also by SIGKILL), so a stale lock
  of a dead run is simply taken over;
* temporary files (``.<name>.[<pid>.]<random>.part<ext>``, ``atomic.py``) and
  staging folders (``.<name>.<pid>.<random>.part``) a killed run left are removed;
* an ``OSError`` or GDAL/HDF5 ``RuntimeError`` that says the disk is full,
  read-only or not writable becomes ``SatsegError("cannot write into <folder>: ...")``.

Without the lock (a dataset folder that several trainings read), ``remove_stale_parts``
removes only the temporary files whose name carries the pid of a process that is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import SatsegError

LOCK_NAME = ".satseg.lock"

#: A temporary file or staging folder: hidden, with a ``.part`` component (GDAL's side files too).
_PART = re.compile(r"^\..+\.part(\.[^/\\]*|-[^/\\]*)?$")
#: The pid ``atomic_path`` and staging folders put in their names: ``.<name>.<pid>.<8 random>.part``.
_PID = re.compile(r"\.(\d+)\.[A-Za-z0-9_]{8}\.part(?:[.-]|$)")

#: The errors of a disk or folder the user can fix: full, read-only, not writable, not a folder.
DISK_ERRNOS = tuple(
    e
    for e in (
        errno.ENOSPC,
        getattr(errno, "EDQUOT", None),
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EFBIG,
        errno.EIO,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
    )
    if e is not None
)


class FolderBusy(SatsegError):  # noqa: N818 - reads better at the raise site
    """Another live run holds the folder's lock."""


def disk_fault(exc: BaseException) -> str | None:
    """The reason (``"No space left on device"``...) when ``exc`` is a disk or folder fault, else None.

    ``OSError`` by its errno; GDAL's and HDF5's ``RuntimeError``/``OSError`` by the
    system's message in their text (``_tiffWriteProc:No space left on device``).
    """
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return os.strerror(exc.errno)
    if not isinstance(exc, (OSError, RuntimeError)):
        return None
    text = str(exc)
    for e in DISK_ERRNOS:
        if os.strerror(e) in text:
            return os.strerror(e)
    if "Free disk space available is" in text:  # GDAL's check before it writes a large file
        return os.strerror(errno.ENOSPC)
    return None


def _where(exc: BaseException, folder: Path) -> str:
    """The path to name in a message: ``folder`` for its own (temporary) files, else the file
    (a copy's error names the source first and the target second: the target is the one)."""
    names = [n for n in (getattr(exc, "filename2", None), getattr(exc, "filename", None)) if n]
    for name in names:
        try:
            Path(os.fsdecode(name)).resolve().relative_to(folder.resolve())
        except (ValueError, OSError, TypeError):
            continue
        return str(folder)
    return os.fsdecode(names[0]) if names else str(folder)


def folder_error(exc: BaseException, folder: str | os.PathLike[str]) -> SatsegError | None:
    """``SatsegError("cannot write into <folder>: <reason>")`` for a disk fault ``exc``, else None."""
    reason = disk_fault(exc)
    if reason is None:
        return None
    return SatsegError(f"cannot write into {_where(exc, Path(folder))}: {reason}")


def probe_write(folder: str | os.PathLike[str], size: int = 64 * 1024) -> OSError | None:
    """The ``OSError`` writing ``size`` bytes into ``folder`` raises now (full, read-only), else None.

    For writers that report a failed write without its cause (GDAL's side files).
    """
    probe = Path(folder) / f".probe.{os.getpid()}.{os.urandom(4).hex()}.part"
    try:
        with open(probe, "wb") as f:
            f.write(bytes(size))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def make_folder(path: str | os.PathLike[str], what: str = "output folder") -> bool:
    """Create ``path`` (and its parents); True when it did not exist before.

    ``SatsegError`` when the path is a file, lies under a file or cannot be created.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SatsegError(f"the {what} {p} is a file, not a folder")
    existed = p.is_dir()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a parent is a file
        raise SatsegError(f"cannot create the {what} {p}: a part of the path is a file") from None
    except OSError as exc:
        reason = "a part of the path is a file" if exc.errno == errno.ENOTDIR else exc.strerror or str(exc)
        raise SatsegError(f"cannot create the {what} {p}: {reason}") from None
    return not existed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (on this machine); True when that cannot be told."""
    if pid == os.getpid():
        return True
    if sys.platform == "win32":
        import ctypes

        kernel = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        kernel.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def _lock_fd(fd: int) -> bool:
    """Take the lock on open file ``fd`` without waiting; False when another run holds it."""
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 1 << 20, os.SEEK_SET)  # lock a byte past the text, which stays readable
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class FolderLock:
    """The lock file of a folder, held while a run writes into it (``acquire`` / ``release``)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.took_over: str | None = None  # what a dead run's lock file said, when it was taken over

    def _holder(self) -> str:
        with contextlib.suppress(OSError):
            return self.path.read_text(encoding="utf-8", errors="replace").strip()
        return ""

    def acquire(self) -> FolderLock:
        """Hold the lock; ``FolderBusy`` when a live run holds it."""
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _lock_fd(fd):
                os.close(fd)
                holder = self._holder().split()
                who = f" (pid {holder[0]}, started {holder[2]})" if len(holder) >= 3 else ""
                raise FolderBusy(
                    f"another satseg run{who} is writing into {self.folder}; wait for it to end or "
                    "choose another folder"
                )
            # The holder before us may have removed the file between our open and our lock.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - five runs racing for one folder
            raise FolderBusy(f"other satseg runs are starting in {self.folder}; try again")
        self.fd = fd
        os.lseek(fd, 0, os.SEEK_SET)
        old = os.read(fd, 200).decode("utf-8", "replace").strip()
        self.took_over = old or None
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        text = f"{os.getpid()} {socket.gethostname()} {stamp}\n".encode()
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, text)
        except OSError:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Let go of the lock and remove the lock file."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        if sys.platform == "win32":
            with contextlib.suppress(OSError):
                import msvcrt

                os.lseek(fd, 1 << 20, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            os.close(fd)
            with contextlib.suppress(OSError):
                self.path.unlink()
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # still held: a run that opens it now finds it gone after its lock
        os.close(fd)


def _folder_busy(path: Path) -> bool:
    """Whether a live run holds the lock of folder ``path``."""
    lock = path / LOCK_NAME
    if not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return True
    try:
        if not _lock_fd(fd):
            return True
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def remove_stale_parts(folder: str | os.PathLike[str], locked: bool, recursive: bool = False) -> int:
    """Remove the temporary files and staging folders killed runs left in ``folder``; how many went.

    A name with a pid is stale when that process is gone; one without (the
    writers' own ``.part`` names) only when the caller holds the folder's lock
    (``locked``), as no live run can then be writing it. A staging folder whose
    own lock a live run holds is kept.
    """
    root = Path(folder)
    if not root.is_dir():
        return 0
    entries = root.rglob(".*") if recursive else root.glob(".*")
    removed = 0
    for path in sorted(entries):
        if not _PART.match(path.name):
            continue
        m = _PID.search(path.name)
        if m is not None:
            if pid_alive(int(m.group(1))):
                continue
        elif not locked:
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                if _folder_busy(path):
                    continue
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        except OSError:
            continue  # not ours to remove after all (permissions): leave it
        removed += 1
    return removed


@contextlib.contextmanager
def output_folder(
    path: str | os.PathLike[str], what: str = "output folder", recursive: bool = False
) -> Iterator[Path]:
    """Create and lock ``path``, clean what killed runs left, and turn disk faults into one line.

    On the way out the lock is released, and a folder this call created is
    removed again when the run failed before writing anything into it.
    ``recursive`` also cleans the subfolders (a dataset's ``images/``...).
    """
    folder = Path(path)
    created = make_folder(folder, what)
    lock = FolderLock(folder)
    try:
        try:
            lock.acquire()
        except OSError as exc:
            raise folder_error(exc, folder) or exc from None
        try:
            remove_stale_parts(folder, locked=True, recursive=recursive)
            yield folder
        except (OSError, RuntimeError) as exc:
            error = folder_error(exc, folder)
            if error is None:
                raise
            raise error from None
        finally:
            lock.release()
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: nothing was written
        raise
