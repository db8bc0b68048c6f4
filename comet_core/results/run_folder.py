"""Run folders that are never lost, mixed up or left half-written.

A run writes every file into a hidden staging sibling of its destination and moves it into place
only when it is complete:

1. ``check_destination(dest, overwrite)`` before any work: ``dest`` must not be a file, must not hold
   a finished run (unless ``overwrite``), and ``overwrite`` replaces only folders that are comet runs.
2. ``RunFolder(dest)`` creates ``<parent>/.<name>.tmp-<pid>-<rand>`` (or adopts the one Hydra already
   made for its own ``.hydra/`` files and log, see comet_core/config/schema.py ``comet.staging``).
3. The run writes into ``folder.staging``; on success ``folder.publish()`` writes the completion
   marker ``COMPLETE`` last and renames the staging folder onto ``dest`` (one atomic ``rename``).
   With ``overwrite`` the old folder is renamed aside first and deleted afterwards: nothing of the old
   run (a stale ``generation.csv`` or ``ledger.csv.gz``) survives beside the new tables.
4. On any error or Ctrl-C (``with folder:``) the staging folder is deleted; ``dest`` is untouched. With
   ``catch_interrupts()`` (the CLI) a Ctrl-C is also recorded, so one that a finalizer swallowed still
   stops ``publish``; one that comes while the folder is being swapped is reported after it.

Another run writing ``dest`` right now (a live ``.<name>.tmp-<pid>-...`` sibling) makes ``check_destination``
refuse, unless ``overwrite``. If another run still took ``dest`` while this one worked (both started at
once), the result lands in ``<dest>-2`` (``-3``, ...) rather than being lost, and the caller says so and
exits non-zero (experiments/run.py): never a silent other folder.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from comet_core.errors import CometError

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
RESULT_FILES = ("metrics.csv", "ops.csv", "generation.csv", "ledger.csv.gz", MARKER)
RUN_SIGNS = (*RESULT_FILES, "config.yaml", ".hydra", "run_info.json")  # a folder with any of these is a run
HYDRA_FILES = (".hydra",)  # plus *.log: what Hydra writes into its job folder before the task starts

_TOKEN = f"{os.getpid()}-{secrets.token_hex(2)}"


def run_token() -> str:
    """`<pid>-<4 hex>`: unique among concurrent processes, fixed within one process and inherited by the
    processes it starts (COMET_RUN_ID): a parallel sweep's workers (joblib) resolve the sweep folder to the
    launcher's, not to one folder per worker."""
    return os.environ.setdefault("COMET_RUN_ID", _TOKEN)


def staging_path(dest: str | os.PathLike) -> Path:
    """The hidden sibling a run of ``dest`` is written into: ``<parent>/.<name>.tmp-<pid>-<rand>``."""
    d = Path(os.path.abspath(dest))
    return d.parent / f".{d.name}.tmp-{_TOKEN}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True


def writers(dest: Path) -> list[int]:
    """Pids of other live runs staging into ``dest`` now (their ``.<name>.tmp-<pid>-<hex>`` siblings)."""
    import re

    d = Path(os.path.abspath(dest))
    if not d.parent.is_dir():
        return []
    pat = re.compile(re.escape(f".{d.name}.tmp-") + r"(\d+)-[0-9a-f]{4}$")
    pids = []
    for p in d.parent.iterdir():
        m = pat.match(p.name)
        if m and p.name != staging_path(d).name and int(m.group(1)) != os.getpid() and _alive(int(m.group(1))):
            pids.append(int(m.group(1)))
    return sorted(pids)


def finished_results(dest: Path) -> list[str]:
    """Result files of a run already in ``dest`` (empty if none)."""
    return [f for f in RESULT_FILES if (dest / f).exists()]


def _is_run_folder(dest: Path) -> bool:
    return any((dest / f).exists() for f in RUN_SIGNS)


def _only_hydra_files(dest: Path) -> bool:
    return all(p.name in HYDRA_FILES or p.suffix == ".log" for p in dest.iterdir())


def check_destination(dest: Path, overwrite: bool) -> None:
    """Refuse, in one line, a destination that cannot or must not receive this run's results."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise CometError(f"output_dir {dest} is a file; choose a folder path with output_dir=")
    parent = next((p for p in (dest, *dest.parents) if p.exists()), None)
    if parent is None or not os.access(parent, os.W_OK | os.X_OK):
        raise CometError(f"output_dir {dest} cannot be written (no write permission in {parent}); "
                         "choose another output_dir=")
    busy = writers(dest)
    if busy and not overwrite:
        raise CometError(f"output_dir {dest} is being written by another run now (pid {', '.join(map(str, busy))}); "
                         "choose another output_dir=, wait for it to finish, or pass overwrite=true to replace its results")
    if not dest.is_dir() or not any(dest.iterdir()) or _only_hydra_files(dest):
        return
    existing = finished_results(dest)
    if existing and not overwrite:
        raise CometError(f"{dest} already holds results ({', '.join(existing)}); choose another output_dir= "
                         "or pass overwrite=true")
    if not _is_run_folder(dest):
        raise CometError(f"output_dir {dest} holds files that are not a comet run; choose a new or empty folder "
                         "(overwrite=true replaces only run folders)")


def probe_writable(dest: Path) -> None:
    """Create and remove a scratch folder where ``dest``'s staging folder will go (one-line error if not)."""
    import tempfile

    d = Path(os.path.abspath(dest))
    parent = next((p for p in d.parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise CometError(f"output_dir {dest} cannot be created: {parent} is not a folder; choose another output_dir=")
    try:
        tempfile.TemporaryDirectory(dir=parent, prefix=".comet-probe-").cleanup()
    except OSError as e:
        raise CometError(f"output_dir {dest} cannot be written ({e.strerror} in {parent}); choose another output_dir=") \
            from None


_INTERRUPTED = threading.Event()   # set by every SIGINT once catch_interrupts() ran


def _on_sigint(signum, frame):
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def catch_interrupts() -> None:
    """SIGINT raises KeyboardInterrupt as before and also sets a flag that `publish` checks. Python drops a
    KeyboardInterrupt raised inside a finalizer (a `__del__`, a GC or weakref callback: "Exception
    ignored in ..."), where a Ctrl-C lands now and then under load; the run then went on to publish its
    results and exit 0 (issue 22). Main thread only (signal handlers live there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
    if not getattr(sys.unraisablehook, "comet", False):
        prev = sys.unraisablehook

        def hook(unraisable):   # the dropped KeyboardInterrupt: recorded, without its traceback
            if isinstance(unraisable.exc_value, KeyboardInterrupt):
                _INTERRUPTED.set()
                return
            prev(unraisable)
        hook.comet = True
        sys.unraisablehook = hook


def interrupted() -> bool:
    """Whether a Ctrl-C came (since catch_interrupts), even one that a finalizer swallowed."""
    return _INTERRUPTED.is_set()


@contextmanager
def _no_interrupt():
    """Hold Ctrl-C while the folder is swapped (main thread only): it is recorded (interrupted()), not raised,
    since the results are complete and moving into place; the caller reports it afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, lambda *a: _INTERRUPTED.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


class RunFolder:
    """Stage a run's files and publish them atomically (module docstring, steps 2-4)."""

    def __init__(self, dest: str | os.PathLike, overwrite: bool = False, hydra_dir: str | os.PathLike | None = None):
        self.dest = Path(os.path.abspath(dest))
        self.overwrite = bool(overwrite)
        self.staging = staging_path(self.dest)
        self.final: Path | None = None
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CometError(f"output_dir {self.dest} cannot be written ({e.strerror}); choose another output_dir=") \
                from None
        self.hydra_dir = Path(os.path.abspath(hydra_dir)) if hydra_dir else None
        self._moved_from: Path | None = None
        if self.hydra_dir is not None and self.hydra_dir != self.staging:
            self._adopt_hydra_files(move=self.hydra_dir == self.dest)

    def _adopt_hydra_files(self, move: bool) -> None:
        """Bring Hydra's `.hydra/` and log into the staging folder (moved out of a fresh sweep job folder,
        copied from a user-chosen hydra.run.dir)."""
        if not self.hydra_dir.is_dir():
            return
        for p in list(self.hydra_dir.iterdir()):
            if p.name in HYDRA_FILES or p.suffix == ".log":
                target = self.staging / p.name
                if move:
                    shutil.move(str(p), target)
                    self._moved_from = self.hydra_dir
                elif p.is_dir():
                    shutil.copytree(p, target, dirs_exist_ok=True)
                else:
                    shutil.copy2(p, target)

    def discard(self) -> None:
        """Delete the unfinished folder; a sweep job's folder gets Hydra's files (config, log) back."""
        if self._moved_from is not None and self._moved_from.is_dir():
            for p in list(self.staging.iterdir()):
                if p.name in HYDRA_FILES or p.suffix == ".log":
                    shutil.move(str(p), self._moved_from / p.name)
        shutil.rmtree(self.staging, ignore_errors=True)

    def publish(self) -> Path:
        """Write the completion marker, then move the staging folder onto dest (or a free sibling). A Ctrl-C
        seen before (even one a finalizer swallowed) stops here: KeyboardInterrupt, nothing published."""
        if interrupted():
            raise KeyboardInterrupt
        (self.staging / MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
        with _no_interrupt():
            if interrupted():
                raise KeyboardInterrupt
            self.final = self._swap()
        return self.final

    def _swap(self) -> Path:
        dest = self.dest
        if dest.is_dir() and _only_hydra_files(dest):  # a sweep job folder: Hydra's files only (or empty)
            for p in list(dest.iterdir()):
                target = self.staging / p.name
                if not target.exists():
                    shutil.move(str(p), target)
                else:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        if dest.exists() and self.overwrite and _is_run_folder(dest) and not _only_hydra_files(dest):
            old = dest.parent / f".{dest.name}.old-{_TOKEN}"
            os.rename(dest, old)
            os.rename(self.staging, dest)
            shutil.rmtree(old, ignore_errors=True)
            return dest
        for n in range(1, 1000):
            target = dest if n == 1 else dest.with_name(f"{dest.name}-{n}")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(self.staging, target)  # atomic; succeeds onto a missing or empty folder only
            except OSError as e:
                if target.exists():
                    continue
                raise CometError(f"could not move results into {target} ({e.strerror}); they are in {self.staging}") \
                    from None
            if n > 1:
                log.warning("%s was taken by another run meanwhile; results are in %s", dest, target)
            return target
        raise CometError(f"no free folder name next to {dest}; results are in {self.staging}")

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.discard()
        return False
