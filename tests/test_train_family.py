"""Seed-family trainer: learning, exact resume, seeds differ, checkpoints load like converted ones."""
import json
import os

import jax
import numpy as np
import pytest

from ucore.jobs.errors import UserError
from ucore.train import core, read_losses, train_family

VOCAB = 48
CTX = 24


def _tiny_config():
  from configs.train_tiny import get_config
  c = get_config()
  c.model.vocab_size = VOCAB
  c.num_steps = 12
  c.checkpoint_steps = (0, 6, 12)
  c.eval_every = 3
  c.state_every = 3
  c.log_every = 3
  c.optim.lr = 1e-2   # 12 steps: a large step so the loss visibly falls
  return c


def _corpus(num_rows=72, seed=0):
  """A learnable corpus: each row walks a fixed random successor table from a random start,
  with BOS (0) first. Next-token loss can fall from ln(48) toward 0."""
  rng = np.random.default_rng(seed)
  succ = rng.permutation(np.arange(1, VOCAB))
  table = np.zeros(VOCAB, np.int64)
  table[np.arange(1, VOCAB)] = succ
  rows = np.zeros((num_rows, CTX), np.int32)
  for r in range(num_rows):
    t = rng.integers(1, VOCAB)
    rows[r, 0] = 0
    for p in range(1, CTX):
      rows[r, p] = t
      t = table[t] if table[t] != 0 else 1
  return rows


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """One uninterrupted run, shared by the tests below."""
  wd = str(tmp_path_factory.mktemp("straight"))
  summary = train_family(_tiny_config(), wd, _corpus())
  return wd, summary


def test_loss_falls_on_small_corpus(straight):
  wd, summary = straight
  df = read_losses(wd)
  held = df[df.split == "heldout"].pivot(index="step", columns="seed", values="loss")
  assert list(held.index) == [0, 3, 6, 9, 12]
  # Initial loss ~ ln(VOCAB) (std-0.02 init gives near-uniform predictions).
  np.testing.assert_allclose(held.loc[0].values, np.log(VOCAB), atol=0.05)
  assert np.all(held.loc[12].values < held.loc[0].values - 0.5), held
  train = df[df.split == "train"].pivot(index="step", columns="seed", values="loss")
  assert list(train.index) == list(range(1, 13))
  assert np.all(train.iloc[-3:].mean().values < train.iloc[:3].mean().values - 0.5)
  assert summary["final_heldout_loss"] == {str(s): pytest.approx(held.loc[12, s]) for s in (0, 1)}


def test_killed_and_resumed_run_is_identical(straight, tmp_path):
  wd_straight, _ = straight
  wd = str(tmp_path / "resumed")
  config = _tiny_config()

  class Killed(Exception):
    pass

  def kill_at_8(event, step):
    if step == 8:   # state committed at 6; steps 7-8 are lost and must be redone
      raise Killed()

  with pytest.raises(Killed):
    train_family(config, wd, _corpus(), _hook=kill_at_8)
  assert not os.path.exists(os.path.join(wd, "family.json"))
  from ucore.train import read_family
  with pytest.raises(UserError, match="not finished"):
    read_family(wd)
  assert os.path.isdir(os.path.join(wd, "seed0", "checkpoint-6"))
  assert not os.path.exists(os.path.join(wd, "seed0", "checkpoint-12"))
  seen = []
  train_family(config, wd, _corpus(), _hook=lambda e, s: seen.append(s))
  assert seen[0] == 7, seen   # resumed from the committed state at step 6, not from 0
  a, b = read_losses(wd_straight), read_losses(wd)
  key = ["split", "step", "seed"]
  a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
  assert len(a) == len(b) == 2 * 12 + 2 * 5   # no duplicated or missing lines
  assert (a[key] == b[key]).all().all()
  np.testing.assert_array_equal(a.loss.values, b.loss.values)
  import ucore
  for seed in (0, 1):
    m1 = ucore.load_model(os.path.join(wd_straight, f"seed{seed}", "final"))
    m2 = ucore.load_model(os.path.join(wd, f"seed{seed}", "final"))
    assert m1.fingerprint == m2.fingerprint


def test_moved_workdir_resumes_identically(straight, tmp_path):
  """Issue 10 item 9: a killed run moved to another path (and its data given from another
  path) resumes there; a finished one moved again reports its checkpoints where they are."""
  import shutil
  config = _tiny_config()
  config.data.store = "/old/place/tokens"   # the data is identified by content, not path

  class Killed(Exception):
    pass

  def kill_at_8(event, step):
    if step == 8:
      raise Killed()

  with pytest.raises(Killed):
    train_family(config, str(tmp_path / "a"), _corpus(), _hook=kill_at_8)
  shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
  config.data.store = "/new/place/tokens"
  seen = []
  train_family(config, str(tmp_path / "b"), _corpus(), _hook=lambda e, s: seen.append(s))
  assert seen[0] == 7, seen
  import ucore
  for seed in (0, 1):
    assert ucore.load_model(os.path.join(straight[0], f"seed{seed}", "final")).fingerprint == \
        ucore.load_model(os.path.join(tmp_path / "b", f"seed{seed}", "final")).fingerprint
  shutil.copytree(str(tmp_path / "b"), str(tmp_path / "c"), symlinks=True)
  shutil.rmtree(str(tmp_path / "b"))
  done = train_family(config, str(tmp_path / "c"), _corpus())
  assert done["final"]["1"] == os.path.join(tmp_path / "c", "seed1", "final")
  assert done["checkpoints"]["0"]["6"] == os.path.join(tmp_path / "c", "seed0", "checkpoint-6")
  assert ucore.load_model(done["final"]["0"]).fingerprint == \
      ucore.load_model(os.path.join(straight[0], "seed0", "final")).fingerprint


def test_seeds_differ_in_weights_and_data_order(straight):
  wd, _ = straight
  import ucore
  m0 = ucore.load_model(os.path.join(wd, "seed0", "checkpoint-0"))
  m1 = ucore.load_model(os.path.join(wd, "seed1", "checkpoint-0"))
  w0 = np.asarray(m0.params["h_0"]["mlp"]["c_fc"]["kernel"])
  w1 = np.asarray(m1.params["h_0"]["mlp"]["c_fc"]["kernel"])
  assert w0.shape == w1.shape and not np.allclose(w0, w1)
  assert abs(np.corrcoef(w0.ravel(), w1.ravel())[0, 1]) < 0.1   # independent draws
  np.testing.assert_allclose(w0.std(), 0.02, rtol=0.1)
  proj = np.asarray(m0.params["h_0"]["mlp"]["c_proj"]["kernel"])
  np.testing.assert_allclose(proj.std(), 0.02 / np.sqrt(2.0), rtol=0.1)   # n_layer = 1
  # Data order: each seed sees every training row once per epoch, in its own order.
  n = 64
  order = {s: np.concatenate([core.batch_row_indices(s, t, 4, n) for t in range(16)])
           for s in (0, 1)}
  for s in (0, 1):
    assert sorted(order[s].tolist()) == list(range(n))
  assert not np.array_equal(order[0], order[1])
  assert not np.array_equal(core.batch_row_indices(0, 16, 4, n), order[0][:4])  # new epoch
  # The seeds' training losses differ from the first update on.
  df = read_losses(wd)
  first = df[(df.split == "train") & (df.step == 1)].set_index("seed").loss
  assert first[0] != first[1]


def test_trained_checkpoints_load_and_match_in_memory_params(straight):
  wd, summary = straight
  import ucore
  rows = _corpus()[:4]
  config = _tiny_config()
  from ucore.train import model_config
  mcfg = model_config(config, VOCAB, CTX)
  for seed in (0, 1):
    model = ucore.load_model(os.path.join(wd, f"seed{seed}", "checkpoint-0"))
    assert model.manifest["source"] == "trained"
    assert model.manifest["seed"] == seed and model.manifest["step"] == 0
    assert model.config == mcfg
    # checkpoint-0 is exactly the initialisation from gpt2_init.
    init = core.gpt2_init(mcfg, seed, config.init_std)
    assert ucore.models.hooked.params_fingerprint(init) == model.fingerprint
    from ucore.models.transformer import TransformerLM
    expected = TransformerLM(mcfg).apply({"params": init}, rows)
    np.testing.assert_allclose(np.asarray(model(rows)), np.asarray(expected), rtol=0, atol=1e-6)
  # final -> checkpoint-12, whose manifest records the step and the held-out loss logged.
  final = ucore.load_model(os.path.join(wd, "seed1", "final"))
  assert final.manifest["step"] == 12
  assert final.manifest["heldout_loss"] == pytest.approx(summary["final_heldout_loss"]["1"])
  assert os.path.realpath(os.path.join(wd, "seed1", "final")) == \
      os.path.realpath(summary["checkpoints"]["1"]["12"])


def test_in_memory_params_after_training_match_checkpoint(tmp_path, monkeypatch):
  """The logits of the last in-memory family params equal those of the saved checkpoints."""
  config = _tiny_config()   # `straight`'s steps: its compiled programs, from the cache
  # one kept checkpoint, state and held-out loss at the end only (none of them compiled in)
  config.checkpoint_steps, config.state_every, config.eval_every = (12,), 12, 12
  captured = {}
  orig = core.make_family_step

  def spy(mcfg, tx):
    step = orig(mcfg, tx)

    def wrapped(p, o, t):
      out = step(p, o, t)
      captured["params"] = jax.tree_util.tree_map(np.array, out[0])
      return out
    return wrapped

  import ucore
  monkeypatch.setattr(core, "make_family_step", spy)
  train_family(config, str(tmp_path / "w"), _corpus())
  from ucore.models.transformer import TransformerLM
  rows = _corpus()[:3]
  for k, seed in enumerate((0, 1)):
    model = ucore.load_model(str(tmp_path / "w" / f"seed{seed}" / "final"))
    mem = core.unstack(captured["params"], k)
    assert ucore.models.hooked.params_fingerprint(mem) == model.fingerprint   # bit-identical weights
    expected = TransformerLM(model.config).apply({"params": mem}, rows)
    # Eager apply vs the model's jitted forward: XLA fuses differently -> float32 rounding.
    np.testing.assert_allclose(np.asarray(model(rows)), np.asarray(expected), rtol=0, atol=1e-6)


def test_changed_config_or_data_is_refused(straight, tmp_path):
  wd, _ = straight
  config = _tiny_config()
  config.optim.lr = 1e-3
  with pytest.raises(UserError, match=r"different config.*optim\.lr"):
    train_family(config, wd, _corpus())
  with pytest.raises(UserError, match=r"different config.*data"):
    train_family(_tiny_config(), wd, _corpus(seed=1))
  # A complete run called again returns its summary without training.
  again = train_family(_tiny_config(), wd, _corpus())
  written = json.load(open(os.path.join(wd, "family.json")))
  assert written["final"] == {"0": os.path.join("seed0", "final"), "1": os.path.join("seed1", "final")}
  from ucore.train import read_family
  assert read_family(wd) == again and again["final"]["0"] == os.path.join(wd, "seed0", "final")
  with pytest.raises(UserError, match="not a training run"):
    read_family(str(tmp_path))
  # A non-empty directory that is not a training run is refused.
  other = tmp_path / "other"
  other.mkdir()
  (other / "x.txt").write_text("x")
  with pytest.raises(UserError, match="not a training run"):
    train_family(_tiny_config(), str(other), _corpus())


def test_bad_inputs_raise_user_errors(tmp_path):
  c = _tiny_config()
  c.seeds = (1, 1)
  with pytest.raises(UserError, match="distinct"):
    train_family(c, str(tmp_path / "a"), _corpus())
  with pytest.raises(UserError, match="vocabulary"):
    train_family(_tiny_config(), str(tmp_path / "b"), _corpus() + VOCAB)
  c = _tiny_config()
  c.heldout_rows = 70
  with pytest.raises(UserError, match="training rows"):
    train_family(c, str(tmp_path / "c"), _corpus())
  with pytest.raises(UserError, match=r"\[rows, ctx\]"):
    train_family(_tiny_config(), str(tmp_path / "d"), _corpus()[0])


@pytest.mark.slow("a real SIGKILL of a training subprocess, then the resume")
def test_sigkill_then_same_call_resumes_identically(straight, tmp_path):
  """A real SIGKILL (no cleanup runs) in a subprocess, then the same call in this process."""
  import signal
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  wd = str(tmp_path / "killed")
  script = f"""
import os, signal, sys
sys.path.insert(0, {repo!r})
from tests.test_train_family import _tiny_config, _corpus
from ucore.train import train_family
def hook(event, step):
  if step == 11:
    os.kill(os.getpid(), signal.SIGKILL)
train_family(_tiny_config(), {wd!r}, _corpus(), _hook=hook)
"""
  # this process's device count (XLA_FLAGS) and compilation cache: the subprocess loads the
  # programs `straight` compiled instead of compiling its own
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
  assert sorted(os.listdir(os.path.join(wd, "state")))[-1] == "9"   # last committed state
  steps = []
  train_family(_tiny_config(), wd, _corpus(), _hook=lambda e, s: steps.append(s))
  assert steps == [10, 11, 12]
  key = ["split", "step", "seed"]
  a = read_losses(straight[0]).sort_values(key).reset_index(drop=True)
  b = read_losses(wd).sort_values(key).reset_index(drop=True)
  assert len(a) == len(b) and (a[key] == b[key]).all().all()
  np.testing.assert_array_equal(a.loss.values, b.loss.values)


def test_max_rows_limits_the_rows_used(tmp_path):
  c = _tiny_config()
  c.data.max_rows = -1
  with pytest.raises(UserError, match="max_rows"):
    train_family(c, str(tmp_path / "bad"), _corpus())
  c = _tiny_config()
  c.data.max_rows, c.checkpoint_steps = 40, (12,)   # `straight`'s steps (compiled programs)
  c.state_every = c.eval_every = 12   # fewer saves and evaluations (not compiled in)
  wd = tmp_path / "w"
  train_family(c, str(wd), _corpus())
  job = json.load(open(wd / "job.json"))
  assert job["data"]["shape"] == [40, CTX]   # 32 training rows + 8 held out
  seen = set()
  for step in range(8):   # 4 rows per step: steps 0-7 cover exactly the 32 training rows
    seen |= set(core.batch_row_indices(0, step, 4, 32).tolist())
  assert seen == set(range(32))


def test_vmapped_family_step_equals_training_each_seed_alone():
  """One compiled vmapped step == the single-model update applied to each seed separately
  (per-model clipping and AdamW state, no mixing across the family)."""
  from ucore.train import model_config
  config = _tiny_config()
  mcfg = model_config(config, VOCAB, CTX)
  tx = core.make_optimizer(config.optim, config.num_steps)
  seeds = (0, 1)
  init = [core.gpt2_init(mcfg, s) for s in seeds]
  fam_p = jax.tree_util.tree_map(jax.numpy.asarray, core.stack_params(init))
  fam_o = core.init_family_opt_state(tx, fam_p)
  step = core.make_family_step(mcfg, tx)
  one = core.make_single_step(mcfg, tx)
  single = [(p, tx.init(p)) for p in init]
  rows = _corpus()
  for t in range(3):
    batch = core.family_batch(rows, seeds, t, 4)
    fam_p, fam_o, stats = step(fam_p, fam_o, batch)
    for k in range(2):
      p, o, st = one(single[k][0], single[k][1], batch[k])
      single[k] = (p, o)
      np.testing.assert_allclose(float(stats["loss"][k]), float(st["loss"]), rtol=1e-6)
      np.testing.assert_allclose(float(stats["grad_norm"][k]), float(st["grad_norm"]),
                                 rtol=1e-5)
  assert step._cache_size() == 1   # one compilation for the whole family, every step
  for k in range(2):
    for a, b in zip(jax.tree_util.tree_leaves(core.unstack(fam_p, k)),
                    jax.tree_util.tree_leaves(single[k][0])):
      # vmapped (batched) vs plain matmuls round differently in float32, and Adam's
      # normalisation m / sqrt(v) turns rounding in near-zero gradients (biases) into ~1e-6
      # parameter differences after 3 steps of lr 1e-2; params move by ~1e-2, so 1e-5 still
      # catches any mixing between members (losses and grad norms above agree to 1e-6).
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)


def test_lr_schedule_warmup_then_cosine():
  config = _tiny_config()
  o = config.optim
  sched = core.lr_schedule(o, 100)
  lr = np.array([float(sched(i)) for i in range(101)])
  assert lr[0] == 0.0 and lr[o.warmup_steps] == pytest.approx(o.lr)
  np.testing.assert_allclose(lr[1], o.lr / o.warmup_steps, rtol=1e-6)
  assert np.all(np.diff(lr[o.warmup_steps:]) <= 1e-12)
  assert lr[100] == pytest.approx(o.lr * o.min_lr_ratio)


def test_loss_lines_without_committed_state_are_redone_once(straight, tmp_path):
  """Killed after loss lines were flushed but before any state committed: the rerun starts
  from step 0 and the losses file holds each line once."""
  import shutil
  wd = str(tmp_path / "w")

  def kill_at_4(event, step):
    if step == 4:
      raise KeyboardInterrupt()

  with pytest.raises(KeyboardInterrupt):
    train_family(_tiny_config(), wd, _corpus(), _hook=kill_at_4)
  shutil.rmtree(os.path.join(wd, "state"))   # as if the kill hit before the first commit
  assert len(read_losses(wd)) > 0
  train_family(_tiny_config(), wd, _corpus())
  key = ["split", "step", "seed"]
  a = read_losses(straight[0]).sort_values(key).reset_index(drop=True)
  b = read_losses(wd).sort_values(key).reset_index(drop=True)
  assert len(a) == len(b) and (a[key] == b[key]).all().all()
  np.testing.assert_array_equal(a.loss.values, b.loss.values)


def test_init_equals_the_per_leaf_eager_draw():
  """gpt2_init draws every leaf in one compiled program; a leaf is still, bit for bit, the
  eager draw normal(fold_in(PRNGKey(seed), rank of its name), shape) times its scale (an
  embedding: std; a residual-writing projection: std / sqrt(2 n_layer))."""
  from ucore.models.hooked import abstract_params
  from ucore.train import model_config
  mcfg = model_config(_tiny_config(), VOCAB, CTX)
  shapes = {jax.tree_util.keystr(p): s.shape
            for p, s in jax.tree_util.tree_flatten_with_path(abstract_params(mcfg))[0]}
  rank = {name: r for r, name in enumerate(sorted(shapes))}
  got = {jax.tree_util.keystr(p): v
         for p, v in jax.tree_util.tree_flatten_with_path(core.gpt2_init(mcfg, 3))[0]}
  checked = 0
  for name in shapes:
    if "wte" in name or ("c_proj" in name and "kernel" in name):
      scale = 0.02 / np.sqrt(2.0 * mcfg.n_layer) if "c_proj" in name else 0.02
      key = jax.random.fold_in(jax.random.PRNGKey(3), rank[name])
      want = np.asarray(jax.random.normal(key, shapes[name], jax.numpy.float32) * scale)
      assert got[name].dtype == np.float32 and np.array_equal(got[name], want), name
      checked += 1
  assert checked == 3   # wte, attn.c_proj, mlp.c_proj
