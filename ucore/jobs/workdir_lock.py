"""One run per workdir: the one home of the workdir lock.

  with hold(workdir): ...   creates `workdir` if needed and holds an exclusive flock on the
                            directory itself; a second process gets the UserError
                            "workdir X is in use by process N".
The lock is on the directory's own inode (no lock file: nothing in the workdir changes, and
there is nothing stale to clean), and the kernel drops it when the process dies, so a kill -9
never leaves a stale lock. Within one process the lock is re-entrant, and nested workdirs are
different inodes: the pipeline holds its workdir while each stage holds its own sub-workdir.
Taken by every command's library entry point: ucore.data.build.build_store,
ucore.train (train_from_store, train_family), ucore.corr.driver.run (process 0 of a
multi-process run), ucore.analyze.run and ucore.pipeline.run.
flock works on local filesystems; on NFS it is emulated and may not cover directories.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading

from ucore.jobs.errors import UserError

_HELD: dict = {}   # (st_dev, st_ino) -> [fd, depth]
_MUTEX = threading.Lock()


def _holder(st) -> str:
  """The pid holding a flock on the inode `st` (Linux /proc/locks), or a phrase."""
  try:
    with open("/proc/locks") as f:
      for line in f:
        parts = line.split()
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
          continue
        maj, mnr, ino = parts[5].split(":")
        if (int(ino) == st.st_ino and int(maj, 16) == os.major(st.st_dev)
            and int(mnr, 16) == os.minor(st.st_dev)):
          return parts[4]
  except (OSError, ValueError):
    pass
  return "another process"


def _open_dir(workdir: str) -> int:
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"workdir {workdir} is a file, not a directory; pass a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
  except OSError as e:
    raise UserError(f"cannot use workdir {workdir}: {e.strerror or e}") from e
  if not os.access(workdir, os.W_OK | os.X_OK):
    os.close(fd)
    raise UserError(f"workdir {workdir} is not writable; pass a directory you can write to")
  return fd


@contextlib.contextmanager
def hold(workdir: str, enabled: bool = True):
  """Holds `workdir` exclusively for the duration of the block (see the module docstring).
  `enabled=False` only creates the directory (for the non-zero processes of one job)."""
  created = not os.path.lexists(workdir)
  fd = _open_dir(workdir)
  if not enabled:
    os.close(fd)
    yield
    return
  st = os.fstat(fd)
  key = (st.st_dev, st.st_ino)
  with _MUTEX:
    held = _HELD.get(key)
    if held is not None:
      os.close(fd)
      held[1] += 1
    else:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise
        raise UserError(f"workdir {workdir} is in use by process {_holder(st)}; wait for it "
                        "to finish (or stop it) and run again") from None
      _HELD[key] = [fd, 1]
  try:
    yield
  finally:
    with _MUTEX:
      held = _HELD[key]
      held[1] -= 1
      if held[1] == 0:
        del _HELD[key]
        if created:   # a run refused before writing anything leaves no workdir behind
          try:
            os.rmdir(workdir)
          except OSError:
            pass   # not empty: the run wrote something
        os.close(held[0])   # closing the only descriptor releases the flock


def locked(fn=None, *, process_zero_only: bool = False):
  """Decorator: runs `fn` holding its `workdir` argument (hold). With process_zero_only, the
  other processes of a multi-process jax job share process 0's lock."""
  import functools
  import inspect

  def wrap(f):
    sig = inspect.signature(f)

    @functools.wraps(f)
    def run(*args, **kwargs):
      workdir = sig.bind(*args, **kwargs).arguments.get("workdir")
      if not workdir:   # f reports the missing workdir in its own words
        return f(*args, **kwargs)
      enabled = True
      if process_zero_only:
        import jax   # no backend is started here: a user error keeps its one line
        enabled = not jax.distributed.is_initialized() or jax.process_index() == 0
      with hold(workdir, enabled=enabled):
        return f(*args, **kwargs)
    return run
  return wrap(fn) if fn is not None else wrap
