"""The one exception type that means "the user's input is wrong", and the OS failures that
are the environment's, not the program's.

main.py turns a UserError into a one-line message on stderr and exit code 2, and so for an
exception that environment_error recognises (disk full, read-only or forbidden path); every
other exception is a bug and keeps its traceback.
"""
import errno as _errno
import os as _os

# A full disk or quota: every write is atomic (ucore.jobs.atomic, committed checkpoints), so what
# was written stays consistent and the same command resumes once space is freed.
DISK_FULL = (_errno.ENOSPC, _errno.EFBIG, _errno.EDQUOT)
# The path cannot be written (read-only filesystem, permissions, an immutable file or
# directory: EPERM), also when it turns so while the job runs: every write is atomic, so what
# was written before stays consistent and the same command resumes once it is writable.
NOT_WRITABLE = (_errno.EROFS, _errno.EACCES, _errno.EPERM)


class UserError(Exception):
  """Bad input from outside (files, flags, configs, resumed state). Message: one line,
  saying what is wrong and what to do."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


def _chain(exc):
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    yield exc
    exc = exc.__cause__ or exc.__context__


def environment_error(exc):
  """The one-line message (without "error: ") for an exception caused by a full disk or an
  unwritable path, looking through its chain of causes and through libraries that report
  the OS error only in their message (tensorstore, orbax); None for anything else."""
  for e in _chain(exc):
    code = getattr(e, "errno", None) if isinstance(e, OSError) else None
    named = [c for c in DISK_FULL if _os.strerror(c) in str(e)]
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    if code in DISK_FULL or named:
      return str(UserError(
          f"the disk is full: {_os.strerror(code if code in DISK_FULL else named[0])}{where}; "
          "what was written so far is consistent: free space and rerun the same command "
          "to resume"))
    named = [c for c in NOT_WRITABLE if _os.strerror(c) in str(e)]
    if code in NOT_WRITABLE or (code is None and named):
      code = code if code in NOT_WRITABLE else named[0]
      return str(UserError(f"{_os.strerror(code)}{where}: the workdir must be writable and "
                           "its inputs readable; fix permissions (or choose another --workdir) "
                           "and rerun the same command to resume"))
  return None
