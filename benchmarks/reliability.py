"""Reliability harness: kill -9 each command at random moments, resume, compare bit for bit.

  .venv/bin/python benchmarks/reliability.py --trials=5            # every command but pipeline
  .venv/bin/python benchmarks/reliability.py --commands=correlate_synthetic --trials=3
  .venv/bin/python benchmarks/reliability.py --commands=pipeline --trials=2   # minutes each

For each command: one uninterrupted reference run; then `--trials` runs, each in a fresh
workdir, started as `python main.py <command> ...` and sent SIGKILL (no cleanup runs) after a
random delay drawn (seeded) from [0.1, 0.95] of the reference's wall time, then the same
command rerun to completion. A trial counts as bit-identical when every output equals the
reference's exactly: the token store (manifest, id, every row and label), training's
checkpoint weights (params fingerprints), loss log and family summary, the correlation tables
(every parquet: columns, index and values, byte for byte) and their summary. Prints
"<command>: k/N bit-identical" per command (and how many trials the kill hit before the run
finished); exit status 1 if any trial differs or a resume fails.

Commands (each small, CPU seconds to a minute):
  tokenize             tokenize_default.py:tiny with a 512-token BPE, 12k tokens
  train                train_tiny.py on the reference token store
  correlate_synthetic  correlate_tiny.py (planted family), a checkpoint every step
  correlate_models     the two reference seeds of `train` on its token store
  pipeline             pipeline_default.py:quick (every stage; minutes)
"""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from ucore.corr import tables as TB  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = ("tokenize", "train", "correlate_synthetic", "correlate_models", "pipeline")
DEFAULT = ORDER[:4]
# Fields of summaries that time the run instead of describing its result.
TIMING_KEYS = ("seconds", "finalize_seconds", "last_session_seconds", "stage_seconds")


def _args(command, refs):
  """The `main.py` arguments of `command` (refs: the reference workdirs made so far)."""
  if command == "tokenize":
    return ["tokenize", "--config=configs/tokenize_default.py:tiny", "--config.tokenizer=bpe",
            "--config.bpe_vocab_size=512", "--config.num_tokens=12000", "--config.shard_rows=16"]
  if command == "train":
    return ["train", "--config=configs/train_tiny.py", f"--config.data.store={refs['tokenize']}"]
  if command == "correlate_synthetic":
    return ["correlate", "--config=configs/correlate_tiny.py",
            "--config.checkpoint.every_steps=1", "--config.mesh.tok=1", "--config.mesh.neu=2"]
  if command == "correlate_models":
    fam = refs["train"]
    return ["correlate", "--config=configs/correlate_default.py",
            f"--config.models={fam}/seed0/final,{fam}/seed1/final", "--config.model_names=a,b",
            f"--config.token_store={refs['tokenize']}", "--config.max_tokens=0",
            "--config.batch_rows=8", "--config.checkpoint.every_steps=1",
            "--config.mesh.tok=1", "--config.mesh.neu=2"]
  if command == "pipeline":
    return ["pipeline", "--config=configs/pipeline_default.py:quick"]
  raise ValueError(command)


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
              JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), PYTHONPATH=ROOT)


def _popen(args, workdir):
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *args,
                           f"--workdir={workdir}"], cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)


def run_to_end(args, workdir, timeout=1800):
  p = _popen(args, workdir)
  _, err = p.communicate(timeout=timeout)
  if p.returncode != 0:
    raise RuntimeError(f"main.py {' '.join(args)} --workdir={workdir} exited {p.returncode}:\n"
                       f"{err[-3000:]}")


def run_killed(args, workdir, delay):
  """Starts the command and SIGKILLs its process group after `delay` s; True if the kill
  came before the command finished."""
  p = _popen(args, workdir)
  try:
    p.wait(timeout=delay)
    return False            # finished first: the trial still checks the rerun
  except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate()
    return True


# ---- what a run produced, as one digest per output ----------------------------------------
def _h(*parts):
  h = hashlib.sha256()
  for p in parts:
    h.update(p if isinstance(p, bytes) else str(p).encode())
  return h.hexdigest()


def _json_without_timing(path):
  def strip(o):
    if isinstance(o, dict):
      return {k: strip(v) for k, v in o.items() if k not in TIMING_KEYS}
    if isinstance(o, list):
      return [strip(v) for v in o]
    return o
  with open(path, encoding="utf-8") as f:
    return json.dumps(strip(json.load(f)), sort_keys=True)


def _parquet(path):
  import pandas as pd
  df = pd.read_parquet(path)
  idx = df.index.to_frame(index=False)
  cols = [(c, str(df[c].dtype), df[c].to_numpy().tobytes() if df[c].dtype.kind in "biuf"
           else repr(df[c].tolist())) for c in df.columns]
  return _h(repr(list(df.columns)), repr(list(df.index.names)),
            *[idx[c].to_numpy().tobytes() for c in idx.columns], *[b for c in cols for b in c])


def store_digest(path):
  from ucore.data.store import open_store
  s = open_store(path)
  return {"store": _h(s.store_id, json.dumps(s.manifest, sort_keys=True),
                      s.read_rows(0, s.num_rows).tobytes(),
                      s.row_labels(0, s.num_rows).tobytes())}


def family_digest(path):
  from ucore.models.hooked import load_model
  out = {"family.json": _h(_json_without_timing(os.path.join(path, "family.json")))}
  with open(os.path.join(path, "losses.jsonl"), encoding="utf-8") as f:
    out["losses.jsonl"] = _h("".join(sorted(f)))
  for seed in sorted(d for d in os.listdir(path) if d.startswith("seed")):
    for ck in sorted(os.listdir(os.path.join(path, seed))):
      if ck.startswith("checkpoint-"):
        out[f"{seed}/{ck}"] = load_model(os.path.join(path, seed, ck)).fingerprint
  return out


def tables_digest(path):
  out = {"summary.json": _h(_json_without_timing(os.path.join(path, "summary.json")))}
  for dirpath, _, files in os.walk(path):
    for f in sorted(files):
      if f.endswith(".parquet"):
        out[os.path.relpath(os.path.join(dirpath, f), path)] = _parquet(os.path.join(dirpath, f))
  return out


def digest(command, workdir):
  if command == "tokenize":
    return store_digest(workdir)
  if command == "train":
    return family_digest(workdir)
  if command.startswith("correlate"):
    return tables_digest(os.path.join(workdir, TB.TABLES_DIR))
  if command == "pipeline":
    out = {f"tokens:{k}": v for k, v in store_digest(os.path.join(workdir, "tokens")).items()}
    out.update({f"family:{k}": v for k, v in
                family_digest(os.path.join(workdir, "family")).items()})
    for t in ["corr"] + [os.path.join("corr_steps", d) for d in
                         sorted(os.listdir(os.path.join(workdir, "corr_steps")))]:
      out.update({f"{t}:{k}": v for k, v in
                  tables_digest(os.path.join(workdir, t, TB.TABLES_DIR)).items()})
    text = _json_without_timing(os.path.join(workdir, "pipeline.json"))
    out["pipeline.json"] = _h(text.replace(os.path.abspath(workdir), "<workdir>"))
    return out
  raise ValueError(command)


def differences(want, got):
  return sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))


# ---- the harness ---------------------------------------------------------------------------
def check(commands, trials, seed=0, root=None, log=print):
  """Runs the harness; returns {command: {"identical": k, "trials": N, "killed": m,
  "differing": [(trial, [outputs])]}}."""
  rng = random.Random(seed)
  root = root or tempfile.mkdtemp(prefix="reliability-")
  refs, results = {}, {}
  needs = {"train": ["tokenize"], "correlate_models": ["tokenize", "train"]}
  todo = [c for c in ORDER if c in commands or any(
      c in needs.get(d, []) for d in commands)]
  for command in todo:
    ref = os.path.join(root, command, "ref")
    args = _args(command, refs)
    t0 = time.time()
    run_to_end(args, ref)
    wall = time.time() - t0
    refs[command] = ref
    if command not in commands:
      continue
    want = digest(command, ref)
    res = results[command] = {"identical": 0, "trials": trials, "killed": 0, "differing": [],
                              "reference_seconds": round(wall, 1)}
    for k in range(trials):
      wd = os.path.join(root, command, f"trial{k}")
      delay = rng.uniform(0.1, 0.95) * wall
      killed = run_killed(args, wd, delay)
      run_to_end(args, wd)
      diff = differences(want, digest(command, wd))
      res["killed"] += killed
      if diff:
        res["differing"].append((k, diff))
      else:
        res["identical"] += 1
      log(f"  {command} trial {k}: {'killed' if killed else 'finished'} at {delay:.1f}s of "
          f"{wall:.1f}s -> {'bit-identical' if not diff else 'DIFFERS: ' + ', '.join(diff[:5])}")
      shutil.rmtree(wd, ignore_errors=True)
  return results


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--commands", default=",".join(DEFAULT),
                  help=f"comma list of {', '.join(ORDER)} (default: all but pipeline)")
  ap.add_argument("--trials", type=int, default=5, help="killed-and-resumed runs per command")
  ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
  ap.add_argument("--workdir", default=None, help="where runs go (default: a new temp dir, "
                  "removed at the end)")
  a = ap.parse_args()
  commands = [c.strip() for c in a.commands.split(",") if c.strip()]
  unknown = [c for c in commands if c not in ORDER]
  if unknown or a.trials < 1:
    sys.stderr.write(f"error: unknown commands {unknown} (known: {', '.join(ORDER)})\n"
                     if unknown else "error: --trials must be >= 1\n")
    sys.exit(2)
  root = a.workdir or tempfile.mkdtemp(prefix="reliability-")
  t0 = time.time()
  try:
    results = check(commands, a.trials, a.seed, root)
  finally:
    if not a.workdir:
      shutil.rmtree(root, ignore_errors=True)
  bad = False
  for command, r in results.items():
    print(f"{command}: {r['identical']}/{r['trials']} bit-identical ({r['killed']} killed "
          f"before finishing; reference {r['reference_seconds']} s)")
    bad |= r["identical"] != r["trials"]
  total = sum(r["identical"] for r in results.values())
  print(f"total: {total}/{sum(r['trials'] for r in results.values())} bit-identical "
        f"in {time.time() - t0:.0f} s (seed {a.seed})")
  sys.exit(1 if bad else 0)


if __name__ == "__main__":
  main()
