"""Pure pieces of seed-family training: init, optimizer, data order, the vmapped step.

A *family* is K GPT-2 models that differ only in their seed s, which sets both the weight
initialisation and the order in which each model sees the training rows. Their parameters are
stacked along a leading axis of size K, and one jitted, vmapped function updates all of them:

  params  = stack_params([gpt2_init(cfg, s) for s in seeds])   # leaves [K, ...]
  opt     = init_family_opt_state(tx, params)
  step    = make_family_step(cfg, tx)                           # one compilation
  params, opt, stats = step(params, opt, tokens)                # tokens [K, B, ctx]

Inside the vmap every model computes its own loss, gradient, global-norm clip and AdamW update
exactly as if it were trained alone (the clip norm is per model, not over the family).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ucore.models.transformer import TransformerLM
from ucore.models.gpt2 import GPT2Config
from ucore.models.hooked import abstract_params


# ---------------------------------------------------------------- initialisation
def gpt2_init(config: GPT2Config, seed: int, std: float = 0.02):
  """GPT-2 / Mistral initialisation as numpy float32: weights and embeddings N(0, std²), the
  residual-writing projections (attn.c_proj, mlp.c_proj) N(0, (std/sqrt(2·n_layer))²),
  biases 0, LayerNorm scales 1. Deterministic in (config shapes, seed)."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_params(config))
  names = [jax.tree_util.keystr(p) for p, _ in flat]
  out = [None] * len(flat)
  # Key of a leaf = its rank in sorted-name order (independent of the tree's flatten order).
  rank = {name: r for r, name in enumerate(sorted(names))}
  draws = []   # (leaf index, key rank, shape, scale) of the kernels and embeddings
  for i in range(len(flat)):
    path, shape = flat[i]
    keys = [getattr(k, "key", str(k)) for k in path]
    leaf, parent = keys[-1], keys[-2] if len(keys) > 1 else ""
    if str(parent).startswith("ln_"):
      out[i] = np.ones(shape.shape, np.float32) if leaf == "scale" else \
          np.zeros(shape.shape, np.float32)
    elif leaf == "bias":
      out[i] = np.zeros(shape.shape, np.float32)
    else:  # kernel / embedding
      s = std / np.sqrt(2.0 * config.n_layer) if parent == "c_proj" else std
      draws.append((i, rank[names[i]], tuple(shape.shape), s))
  normals = _normal_draws(tuple(d[1:3] for d in draws))(jax.random.PRNGKey(int(seed)))
  for (i, _, _, s), z in zip(draws, normals):
    # scaled outside the program: XLA fuses a product into the normal's arithmetic and
    # rounds differently; numpy's float32 product is the eager (unfused) one, bit for bit
    out[i] = np.asarray(z, np.float32) * np.float32(s)
  return jax.tree_util.tree_unflatten(treedef, out)


@functools.lru_cache(maxsize=16)
def _normal_draws(draws):
  """One compiled program for all of a config's draws (rank, shape): key ->
  [normal(fold_in(key, rank), shape)], the same numbers as one eager jax.random.normal per
  leaf, which compiled a program per distinct shape."""
  def draw(key):
    return [jax.random.normal(jax.random.fold_in(key, r), shape, jnp.float32)
            for r, shape in draws]
  return jax.jit(draw)


def stack_params(params_list):
  """[pytree] * K -> one pytree whose leaves have a leading axis K."""
  return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *params_list)


def unstack(tree, k: int):
  """Member k of a stacked pytree, as numpy."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x[k]), tree)


# ---------------------------------------------------------------- optimizer
def lr_schedule(optim, num_steps: int):
  """Linear warmup from 0 to optim.lr over optim.warmup_steps, cosine decay to
  optim.lr * optim.min_lr_ratio at num_steps."""
  return _schedule(float(optim.lr), float(optim.min_lr_ratio), int(optim.warmup_steps),
                   int(num_steps))


def _schedule(lr, min_lr_ratio, warmup, num_steps):
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=lr * min_lr_ratio)


def _decay_mask(params):
  # Weight decay on matrices (kernels, embeddings) only; not on biases or LayerNorm scales.
  return jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)


_OPTIM_FIELDS = ("lr", "min_lr_ratio", "grad_clip", "b1", "b2", "eps", "weight_decay")


def make_optimizer(optim, num_steps: int) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW with the warmup + cosine schedule. The same settings give
  the same object, so the steps built from it below are reused within a process."""
  return _optimizer(*(float(optim[f]) for f in _OPTIM_FIELDS), int(optim.warmup_steps),
                    int(num_steps))


@functools.lru_cache(maxsize=16)
def _optimizer(lr, min_lr_ratio, grad_clip, b1, b2, eps, weight_decay, warmup_steps,
               num_steps):
  return optax.chain(
      optax.clip_by_global_norm(grad_clip),
      optax.adamw(_schedule(lr, min_lr_ratio, warmup_steps, num_steps), b1=b1, b2=b2, eps=eps,
                  weight_decay=weight_decay, mask=_decay_mask))


@functools.lru_cache(maxsize=16)
def _family_opt_init(tx):
  return jax.jit(jax.vmap(tx.init))


def init_family_opt_state(tx, stacked_params):
  return _family_opt_init(tx)(stacked_params)


# ---------------------------------------------------------------- loss and steps
def lm_loss(module, params, rows):
  """Mean next-token cross-entropy of rows [B, ctx] (inputs rows[:, :-1], targets rows[:, 1:])."""
  nll_sum, count = lm_nll_sum(module, params, rows)
  return nll_sum / count


def lm_nll_sum(module, params, rows):
  logits = module.apply({"params": params}, rows[:, :-1])
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, rows[:, 1:, None], axis=-1)[..., 0]
  return jnp.sum(nll), jnp.asarray(nll.size, jnp.float32)


def single_update(config: GPT2Config, tx):
  """The update of ONE model: (params, opt_state, rows [B, ctx]) -> (params, opt_state, stats).
  stats: loss (before the update), grad_norm (before clipping)."""
  module = TransformerLM(config)

  def update(params, opt_state, rows):
    loss, grads = jax.value_and_grad(functools.partial(lm_loss, module))(params, rows)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return update


@functools.lru_cache(maxsize=16)
def make_family_step(config: GPT2Config, tx):
  """jit(vmap(update)) over the family axis: tokens [K, B, ctx]. Params and optimizer state
  are donated (updated in place). Cached: a second run in the process (a resume, the next
  family of a sweep) reuses the traced and compiled step instead of tracing it again."""
  return jax.jit(jax.vmap(single_update(config, tx)), donate_argnums=(0, 1))


def make_single_step(config: GPT2Config, tx):
  """The same update for one model (the sequential baseline of benchmarks/train.py)."""
  return jax.jit(single_update(config, tx), donate_argnums=(0, 1))


@functools.lru_cache(maxsize=16)
def make_family_eval(config: GPT2Config):
  """(stacked params, rows [B, ctx]) -> (nll sums [K], token count): every member of the
  family on the same held-out rows."""
  module = TransformerLM(config)
  return jax.jit(jax.vmap(functools.partial(lm_nll_sum, module), in_axes=(0, None),
                          out_axes=(0, None)))


# ---------------------------------------------------------------- data order
@functools.lru_cache(maxsize=64)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n)


def batch_row_indices(seed: int, step: int, batch_rows: int, num_rows: int) -> np.ndarray:
  """Training-row indices of update `step` for the model of `seed`: the row stream of a seed is
  a fresh permutation of [0, num_rows) per epoch (numpy default_rng([seed, epoch, 0x5EED])),
  read batch_rows at a time. A pure function of step, so resuming needs no data state."""
  positions = int(step) * int(batch_rows) + np.arange(int(batch_rows))
  epochs = positions // num_rows
  out = np.empty(int(batch_rows), np.int64)
  for e in np.unique(epochs):
    sel = epochs == e
    out[sel] = _epoch_permutation(seed, int(e), num_rows)[positions[sel] % num_rows]
  return out


def family_batch(train_rows: np.ndarray, seeds, step: int, batch_rows: int) -> np.ndarray:
  """int32 [K, batch_rows, ctx]: each seed's batch of update `step`."""
  n = train_rows.shape[0]
  return np.stack([train_rows[batch_row_indices(s, step, batch_rows, n)] for s in seeds]
                  ).astype(np.int32)
