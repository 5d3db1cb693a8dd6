"""CPU seconds of `convert` + `load_model` on a full-size random GPT-2 .bin checkpoint, with the
copy-free read/write path against the former one, in the same run.

  .venv/bin/python benchmarks/convert_cost.py --size=small --repeats=2

Writes one random-weight GPT2LMHeadModel of the Mistral GPT-2 shape (small: 124M parameters,
medium: 355M) as pytorch_model.bin, then converts and loads it in fresh processes, alternating:
  current   the product as it is (the zip .bin memory-mapped, the params fingerprint hashed from
            the arrays' buffers, orbax's defensive copy of each host array skipped);
  former    the same code with those three steps restored to what they were before: torch.load
            into fresh memory, fingerprint over arr.tobytes(), orbax's deepcopy of each array.
Both give the same params fingerprint (checked). Prints CPU seconds (user + sys of the child)
for each run, and the ratio of the medians.
"""
import os
import sys

if __name__ == "__main__":
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIMS = {"small": (12, 768, 12), "medium": (24, 1024, 16)}


def _write_checkpoint(directory, size):
  import torch
  from transformers import GPT2Config, GPT2LMHeadModel
  from transformers.initialization import no_init_weights
  n_layer, d, h = DIMS[size]
  cfg = GPT2Config(n_layer=n_layer, n_embd=d, n_head=h, n_positions=1024, vocab_size=50257)
  with no_init_weights():
    model = GPT2LMHeadModel(cfg)
  model.tie_weights()
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.02, generator=gen)
  os.makedirs(directory)
  cfg.to_json_file(os.path.join(directory, "config.json"))
  torch.save({k: v.clone() for k, v in model.state_dict().items()},
             os.path.join(directory, "pytorch_model.bin"))


def _former():
  """Restores the three copies the current path avoids (the code before the change)."""
  import copy
  import hashlib
  import jax
  import numpy as np
  import torch
  from ucore.models import hooked
  real_load = torch.load
  torch.load = lambda *a, **kw: real_load(*a, **dict(kw, mmap=False))
  hooked._WrittenInPlace.__deepcopy__ = lambda self, memo: copy.deepcopy(np.asarray(self))

  def params_fingerprint(params):
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
      arr = np.ascontiguousarray(np.asarray(leaf))
      h.update(jax.tree_util.keystr(path).encode())
      h.update(str(arr.dtype).encode() + str(arr.shape).encode())
      h.update(arr.tobytes())
    return h.hexdigest()
  hooked.params_fingerprint = params_fingerprint


def _child(variant, src, out):
  sys.path.insert(0, ROOT)
  if variant == "former":
    _former()
  from converters.convert import convert
  from ucore import load_model
  manifest = convert(src, out)
  model = load_model(out)
  assert model.fingerprint == manifest["params_fingerprint"]
  print(json.dumps({"fingerprint": manifest["params_fingerprint"]}))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", choices=sorted(DIMS), default="small")
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.child:
    return _child(*a.child)
  with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "hf")
    _write_checkpoint(src, a.size)
    cpu = {"current": [], "former": []}
    prints = set()
    for i in range(a.repeats):
      for variant in ("current", "former"):
        out = os.path.join(tmp, f"{variant}{i}")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", variant, src,
                            out], capture_output=True, text=True, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu[variant].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        prints.add(json.loads(r.stdout.strip().splitlines()[-1])["fingerprint"])
        subprocess.run(["rm", "-rf", out], check=True)
        print(f"{variant:8s} run {i}: {cpu[variant][-1]:6.1f} s CPU", flush=True)
    assert len(prints) == 1, prints
    med = {k: sorted(v)[len(v) // 2] for k, v in cpu.items()}
    print(f"GPT-2 {a.size}: convert + load_model {med['current']:.1f} s CPU (current) vs "
          f"{med['former']:.1f} s (former): x{med['current'] / med['former']:.2f}; "
          "same params fingerprint")


if __name__ == "__main__":
  main()
