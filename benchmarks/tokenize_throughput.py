"""Tokenization throughput of the token-store pipeline on the embedded corpus.

  .venv/bin/python benchmarks/tokenize_throughput.py [--repeats=3] [--ctx=512]

Measures, in one process (the machine is shared and noisy, so the ratios matter more than the
absolute figures):
  read      streaming the documents through `datasets` only (no tokenization)
  encode    `tokenizers` encode_batch_fast on the same texts (the BPE's own speed)
  pipeline  build_store end to end (read + filter + encode + rows + shards + shuffle + zarr3
            write + manifest), num_tokens=0 (every row)
Prints a markdown table (median of --repeats runs) for BENCHMARKS.md.
"""
import os
import sys

# This file's name shadows the stdlib `tokenize` module: take benchmarks/ off sys.path first.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app, flags, logging

FLAGS = flags.DEFINE_integer("repeats", 3, "runs per measurement (median reported)")
CTX = flags.DEFINE_integer("ctx", 512, "row length")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import importlib.util
  import platform
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location(
      "tokenize_default", os.path.join(repo, "configs", "tokenize_default.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  from ucore.models import tokenizer as tokmod
  from ucore.data import build, sources

  cfg = mod.get_config()
  cfg.num_tokens = 0
  cfg.ctx = CTX.value
  cfg.log_every_s = 1e9
  src = sources.resolve(cfg)
  tok = tokmod.load(tokmod.gpt2_files_offline())

  read_t, enc_t, pipe_t = [], [], []
  texts = None
  n_tokens = None
  for _ in range(FLAGS.value):
    t = time.perf_counter()
    texts = [x for x, _ in sources.iter_documents(src) if len(x) > cfg.min_chars]
    read_t.append(time.perf_counter() - t)
    t = time.perf_counter()
    encs = []
    for i in range(0, len(texts), cfg.encode_batch_docs):
      encs.extend(tok.encode_batch_fast(texts[i:i + cfg.encode_batch_docs]))
    enc_t.append(time.perf_counter() - t)
    n_tokens = sum(len(e.ids) for e in encs)
    with tempfile.TemporaryDirectory() as d:
      t = time.perf_counter()
      store = build.build_store(cfg, os.path.join(d, "store"))
      pipe_t.append(time.perf_counter() - t)
      assert store.manifest["totals"]["tokens"] == n_tokens
      rows = store.num_rows
  med = statistics.median
  print(f"corpus: {len(texts)} documents, {n_tokens} tokens -> {rows} rows of {cfg.ctx}; "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"median of {FLAGS.value}")
  print("| stage | seconds | tokens/s |")
  print("|---|---|---|")
  for name, ts in (("read (datasets streaming)", read_t), ("encode (tokenizers BPE)", enc_t),
                   ("pipeline (build_store end to end)", pipe_t)):
    print(f"| {name} | {med(ts):.2f} | {n_tokens / med(ts):,.0f} |")
  print(f"pipeline / (read + encode) time ratio: {med(pipe_t) / (med(read_t) + med(enc_t)):.2f}")


if __name__ == "__main__":
  app.run(main)
