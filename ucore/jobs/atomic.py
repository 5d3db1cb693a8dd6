"""Atomic file and directory writes: a reader sees the old state or the new one, never half.

Pattern: write into a sibling temporary path, fsync, then os.replace / os.rename. Directories
are staged under `<final>.partial-<pid>` and renamed into place only when complete, so a
crash leaves a `.partial-*` folder that can never be mistaken for a finished result.
"""
import contextlib
import json
import os
import re
import shutil
import tempfile


def write_bytes(path: str, data: bytes) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def write_buffered(path: str, save) -> str:
  """Atomically writes what `save(file_like)` writes into an in-memory buffer (np.save,
  np.savez, DataFrame.to_parquet, ...); returns `path`."""
  import io
  buf = io.BytesIO()
  save(buf)
  write_bytes(path, buf.getvalue())
  return path


def write_parquet(df, path: str) -> str:
  """A pandas DataFrame as parquet (index kept), atomically; returns `path`."""
  return write_buffered(path, df.to_parquet)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str):
  with open(path, "r", encoding="utf-8") as f:
    return json.load(f)


@contextlib.contextmanager
def staged_dir(final_path: str, replace: bool = False):
  """Yields a temporary directory; renames it to `final_path` on success only.

  `final_path` must not exist yet (callers check and raise UserError first), unless
  `replace`: then the old one is moved aside to `<final>.partial-old-<pid>` (which
  remove_partials cleans after a kill between the two renames) and removed.
  """
  final_path = os.path.abspath(final_path)
  parent = os.path.dirname(final_path)
  os.makedirs(parent, exist_ok=True)
  staging = f"{final_path}.partial-{os.getpid()}"
  if os.path.exists(staging):
    shutil.rmtree(staging)
  os.makedirs(staging)
  try:
    yield staging
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  old = None
  if os.path.exists(final_path):
    if replace:
      old = f"{final_path}.partial-old-{os.getpid()}"
      os.rename(final_path, old)
    else:   # an empty placeholder directory (e.g. created by a launcher) is replaced
      os.rmdir(final_path)
  os.rename(staging, final_path)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def remove_partials(final_pattern: str) -> list:
  """Removes the `<final>.partial-*` staging folders left by killed staged_dir writers, for
  every final path matching the glob `final_pattern`; returns what it removed. Call only
  while holding the workdir (ucore.jobs.workdir_lock), so no live writer owns one."""
  import glob
  gone = sorted(glob.glob(f"{final_pattern}.partial-*"))
  for p in gone:
    shutil.rmtree(p, ignore_errors=True)
  return gone


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@=-]{0,127}")


def check_safe_name(name, what: str) -> str:
  """`name` if it can be a file-name component (letters, digits and . _ - + @ =, starting
  with a letter or digit: no '/', no '..', nothing absolute); else a UserError naming
  `what`. For names from configs that end up in file names."""
  from ucore.jobs.errors import UserError
  if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
    raise UserError(f"{what} {name!r} is not a safe name: use letters, digits and . _ - + @ = "
                    "(starting with a letter or digit)")
  return name


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
  import hashlib
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while True:
      b = f.read(chunk)
      if not b:
        break
      h.update(b)
  return h.hexdigest()
