"""What the token store's content checksums cost (issue 21 item 2), extrapolated to 1e8 tokens.

  .venv/bin/python benchmarks/store_checksum_cost.py --tokens=10000000

Writes a zarr3 tokens array shaped like the paper's store (rows of 512 tokens, 64-row zstd
chunks, as ucore.data.store writes them) holding random GPT-2 token ids, then reads it all in
correlate's pattern (8-row batches, in order) twice in the same run: through the reader without
checksums (what stores before them get) and through the verifying reader (each chunk read
whole, its sha256 checked, kept for the next batches). Also times the builder's side: the
sha256 of every chunk it writes. Prints seconds and the ratio; the 1e8 figures scale the
measured ones linearly (both passes touch every chunk once).
"""
import os
import sys

if __name__ == "__main__":
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

CTX, CHUNK, BATCH = 512, 64, 8


def main():
  from ucore.data import store as S
  ap = argparse.ArgumentParser()
  ap.add_argument("--tokens", type=float, default=1e7)
  ap.add_argument("--repeats", type=int, default=2)
  a = ap.parse_args()
  rows = int(a.tokens) // CTX
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "tokens")
    arr = S.create_array(path, (rows, CTX), (CHUNK, CTX))
    digests = []
    t_hash = 0.0
    for a0 in range(0, rows, 4096):
      block = rng.integers(0, 50257, (min(4096, rows - a0), CTX), dtype=np.int32)
      arr[a0:a0 + block.shape[0]].write(block).result()
      t0 = time.perf_counter()
      digests += S.chunk_digests(block, CHUNK)
      t_hash += time.perf_counter() - t0
    arr = S.open_array(path)
    best = {}
    for _ in range(a.repeats):
      for name, digs in (("unverified", None), ("verified", digests)):
        reader = S._VerifiedArray(path, "tokens", arr, CHUNK, digs)
        t0 = time.perf_counter()
        for g in range(0, rows, BATCH):
          reader.read(g, min(g + BATCH, rows))
        best[name] = min(best.get(name, 1e9), time.perf_counter() - t0)
  scale = 1e8 / (rows * CTX)
  print(f"{rows * CTX:.3g} tokens ({rows} rows x {CTX}, {len(digests)} chunks of {CHUNK} rows), "
        f"read in {BATCH}-row batches; best of {a.repeats}:")
  print(f"  read without checksums: {best['unverified']:.2f} s  (1e8 tokens: "
        f"{best['unverified'] * scale:.0f} s)")
  print(f"  read, every chunk verified: {best['verified']:.2f} s  (1e8 tokens: "
        f"{best['verified'] * scale:.0f} s); ratio {best['verified'] / best['unverified']:.2f}")
  print(f"  builder's sha256 of every chunk: {t_hash:.2f} s  (1e8 tokens: {t_hash * scale:.1f} s)")


if __name__ == "__main__":
  main()
