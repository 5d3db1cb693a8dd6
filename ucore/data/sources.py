"""Where documents come from: an HF hub dataset (streamed) or local files, both via `datasets`.

A source is described by plain config fields (`source`, `split`, `revision`, `text_field`,
`label_field`, `txt_sample_by`). `resolve(config)` pins it down (file list + sha256s, or hub
id + revision) so a resumed job can refuse a changed source; `iter_documents` streams
`(text, label)` pairs in a fixed order and can skip the first n (resume).
"""
import dataclasses
import glob
import os

from ucore.jobs.atomic import sha256_file
from ucore.jobs.errors import UserError

# file suffix -> datasets builder
_BUILDERS = (
    (".jsonl.zst", "json"), (".json.zst", "json"), (".jsonl.gz", "json"), (".json.gz", "json"),
    (".jsonl", "json"), (".json", "json"), (".parquet", "parquet"),
    (".txt.gz", "text"), (".txt.zst", "text"), (".txt", "text"),
)
NO_LABEL = "all"   # the one label name when no label field is configured


@dataclasses.dataclass(frozen=True)
class Source:
  kind: str                  # "files" | "hub"
  name: str                  # the config's `source` string
  split: str
  revision: str              # hub revision ("" = default branch); "" for files
  builder: str               # datasets builder for files ("json", "parquet", "text")
  files: tuple = ()          # absolute paths, sorted
  file_sha256: tuple = ()    # same order
  text_field: str = "text"
  label_field: str = ""
  txt_sample_by: str = "document"

  def identity(self) -> dict:
    """What must not change between a job and its resume (and what the manifest records)."""
    d = {"kind": self.kind, "name": self.name, "split": self.split,
         "text_field": self.text_field, "label_field": self.label_field}
    if self.kind == "files":
      d.update(builder=self.builder, txt_sample_by=self.txt_sample_by,
               files=[{"path": p, "sha256": h} for p, h in zip(self.files, self.file_sha256)])
    else:
      d.update(revision=self.revision)
    return d


def _looks_local(s: str) -> bool:
  return (any(c in s for c in "*?[") or os.path.exists(s) or s.startswith(("/", "./", "../"))
          or any(s.endswith(suf) for suf, _ in _BUILDERS))


def resolve(config) -> Source:
  name = str(config.source).strip()
  if not name:
    raise UserError("config.source is empty: give an HF dataset id or local file paths/globs")
  common = dict(text_field=str(config.text_field), label_field=str(config.label_field or ""))
  if not common["text_field"]:
    raise UserError("config.text_field is empty: name the field that holds the document text")
  parts = [p.strip() for p in name.split(",") if p.strip()]
  if all(_looks_local(p) for p in parts):
    files = []
    for p in parts:
      hits = sorted(glob.glob(p, recursive=True))
      if os.path.isdir(p):
        hits = sorted(h for h in glob.glob(os.path.join(p, "**", "*"), recursive=True)
                      if os.path.isfile(h) and _builder_for(h))
      if not hits:
        raise UserError(f"source {p!r} matches no files")
      files.extend(os.path.abspath(h) for h in hits if os.path.isfile(h))
    files = sorted(dict.fromkeys(files))
    if not files:
      raise UserError(f"source {name!r} matches no files")
    builders = {_builder_for(f) for f in files}
    if None in builders:
      bad = [f for f in files if not _builder_for(f)][0]
      raise UserError(f"unsupported file type {bad!r}: use .txt, .jsonl, .jsonl.zst, .json, "
                      ".parquet (optionally .gz/.zst compressed text/json)")
    if len(builders) > 1:
      raise UserError(f"source {name!r} mixes file types ({sorted(builders)}); use one type")
    sample_by = str(config.get("txt_sample_by", "document"))
    if sample_by not in ("document", "paragraph", "line"):
      raise UserError(f"config.txt_sample_by={sample_by!r}: use document, paragraph or line")
    if builders == {"text"} and common["text_field"] != "text":
      raise UserError("plain-text files have one field, 'text': set config.text_field=text")
    return Source(kind="files", name=name, split="train", revision="", builder=builders.pop(),
                  files=tuple(files), file_sha256=tuple(sha256_file(f) for f in files),
                  txt_sample_by=sample_by, **common)
  return Source(kind="hub", name=name, split=str(config.split or "train"),
                revision=str(config.get("revision", "") or ""), builder="", **common)


def _builder_for(path: str):
  for suf, b in _BUILDERS:
    if path.endswith(suf):
      return b
  return None


def _dataset(src: Source):
  import datasets
  try:
    if src.kind == "files":
      kwargs = {"sample_by": src.txt_sample_by} if src.builder == "text" else {}
      return datasets.load_dataset(src.builder, data_files={"train": list(src.files)},
                                   split="train", streaming=True, **kwargs)
    return datasets.load_dataset(src.name, split=src.split, streaming=True,
                                 revision=src.revision or None)
  except UserError:
    raise
  except Exception as e:  # datasets raises many types for a bad id / split / offline hub
    raise UserError(f"cannot open source {src.name!r} (split {src.split!r}): "
                    f"{type(e).__name__}: {e}") from e


def num_documents_hint(src: Source):
  """Number of documents, if cheap to know (for the ETA only), else None: hub metadata;
  parquet row counts; line counts of (compressed) JSON lines; files of document-mode text."""
  try:
    if src.kind == "hub":
      info = _dataset(src).info
      return int(info.splits[src.split].num_examples) if info.splits else None
    if src.builder == "parquet":
      import pyarrow.parquet as pq
      return sum(pq.ParquetFile(f).metadata.num_rows for f in src.files)
    if src.builder == "text":
      return len(src.files) if src.txt_sample_by == "document" else None
    if all(f.endswith((".jsonl", ".jsonl.zst", ".jsonl.gz")) for f in src.files):
      return sum(_count_lines(f) for f in src.files)
  except Exception:  # only a progress hint
    return None
  return None


def _count_lines(path: str) -> int:
  import gzip
  if path.endswith(".zst"):
    import zstandard
    f = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
  elif path.endswith(".gz"):
    f = gzip.open(path, "rb")
  else:
    f = open(path, "rb")
  n, last = 0, b"\n"
  with f:
    while True:
      block = f.read(1 << 22)
      if not block:
        break
      n += block.count(b"\n")
      last = block[-1:]
  return n + (last != b"\n")


def _get(row: dict, dotted: str):
  cur = row
  for key in dotted.split("."):
    if not isinstance(cur, dict) or key not in cur:
      return _MISSING
    cur = cur[key]
  return cur


_MISSING = object()


def iter_documents(src: Source, skip: int = 0):
  """Yields (text, label) for every document in source order, after the first `skip`.

  A document whose text is null counts as empty (the length filter drops it). A missing text
  or label field is a UserError naming the fields the rows do have.
  """
  ds = _dataset(src)
  if skip:
    ds = ds.skip(skip)
  index = skip
  it = iter(ds)
  while True:
    try:
      row = next(it)
    except StopIteration:
      return
    except UserError:
      raise
    except Exception as e:  # corrupt file, bad compression, schema clash ...
      raise UserError(f"cannot read document {index} of {src.name!r}: "
                      f"{type(e).__name__}: {e}") from e
    text = _get(row, src.text_field)
    if text is _MISSING:
      raise UserError(f"document {index} of {src.name!r} has no text field "
                      f"{src.text_field!r}; fields: {sorted(row)} (set config.text_field)")
    if src.label_field:
      label = _get(row, src.label_field)
      if label is _MISSING:
        raise UserError(f"document {index} of {src.name!r} has no label field "
                        f"{src.label_field!r}; fields: {sorted(row)} (set config.label_field, "
                        "or '' for no labels)")
      label = "" if label is None else str(label)
    else:
      label = NO_LABEL
    yield ("" if text is None else str(text)), label
    index += 1


def kept_texts(src: Source, min_chars: int, limit: int = 0):
  """The texts of the documents the token recipe keeps (more than min_chars characters), in
  source order; the first `limit` of them (0 = all). A trained BPE learns from these."""
  n = 0
  for text, _ in iter_documents(src):
    if len(text) > min_chars:
      yield text
      n += 1
      if limit and n >= limit:
        return


def resolved_revision(src: Source):
  """The hub commit sha of the dataset, when the hub can be asked (else None)."""
  if src.kind != "hub" or os.environ.get("HF_DATASETS_OFFLINE") == "1" or \
      os.environ.get("HF_HUB_OFFLINE") == "1":
    return None
  try:
    from huggingface_hub import HfApi
    return HfApi().dataset_info(src.name, revision=src.revision or None).sha
  except Exception:  # offline or private: the config's revision is what we have
    return None
