"""GPT-2 as Flax (linen) modules, with TransformerLens hook points.

Parameter tree mirrors HuggingFace's module names (wte, wpe, h_{l}/{ln_1,attn,ln_2,mlp}, ln_f,
lm_head) so the converter's key map is a plain table; kernels are stored [in, out] exactly like
HF's Conv1D weights.

Every hook point calls `hook(name, x)`, which may replace `x` (an intervention) and may record it
(a cache entry). `hook` is a plain Python object created inside the jitted function, so caching
and interventions cost nothing when not requested.
"""
import jax
import jax.numpy as jnp
import flax.linen as nn

from ucore.gpt2_config import GPT2Config


def no_hook(name, x):
  del name
  return x


def activation_fn(name: str):
  if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    return lambda x: jax.nn.gelu(x, approximate=True)
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name == "relu":
    return jax.nn.relu
  if name in ("silu", "swish"):
    return jax.nn.silu
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  if name == "tanh":
    return jnp.tanh
  raise ValueError(f"unsupported activation {name}")  # GPT2Config validates earlier


def _precision(dtype):
  # float32 means float32: no TF32 on GPUs, no bf16 passes on TPUs.
  return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT


class LayerNorm(nn.Module):
  """GPT-2 LayerNorm: exact two-pass variance in float32, the config's epsilon.

  (Flax's nn.LayerNorm defaults to eps 1e-6 and a one-pass variance.) Hooks follow
  TransformerLens: `hook_scale` = sqrt(var + eps), `hook_normalized` = (x - mean) / scale.
  """
  epsilon: float
  hook_prefix: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, hook):
    d = x.shape[-1]
    scale_param = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
    bias_param = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
    x32 = x.astype(jnp.float32)
    centered = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    scale = hook(self.hook_prefix + "hook_scale",
                 jnp.sqrt(jnp.mean(jnp.square(centered), axis=-1, keepdims=True) + self.epsilon))
    normalized = hook(self.hook_prefix + "hook_normalized", centered / scale)
    return (normalized * scale_param + bias_param).astype(self.dtype)


class Attention(nn.Module):
  config: GPT2Config
  layer_idx: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, hook):
    cfg = self.config
    p = f"blocks.{self.layer_idx}.attn."
    batch, pos, _ = x.shape
    prec = _precision(self.dtype)
    qkv = nn.Dense(3 * cfg.n_embd, dtype=self.dtype, precision=prec, name="c_attn")(x)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    split = lambda t: t.reshape(batch, pos, cfg.n_head, cfg.d_head)
    q = hook(p + "hook_q", split(q))
    k = hook(p + "hook_k", split(k))
    v = hook(p + "hook_v", split(v))
    # reorder_and_upcast_attn: scores and softmax in float32 whatever the compute dtype.
    score_dtype = jnp.float32 if (cfg.reorder_and_upcast_attn or self.dtype == jnp.float32) \
        else self.dtype
    scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(score_dtype), k.astype(score_dtype),
                        precision=prec)
    if cfg.scale_attn_weights:
      scores = scores / jnp.asarray(float(cfg.d_head) ** 0.5, score_dtype)
    if cfg.scale_attn_by_inverse_layer_idx:
      scores = scores / jnp.asarray(float(self.layer_idx + 1), score_dtype)
    causal = jnp.tril(jnp.ones((pos, pos), dtype=bool))
    scores = jnp.where(causal, scores, jnp.finfo(score_dtype).min)
    scores = hook(p + "hook_attn_scores", scores)
    pattern = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    pattern = hook(p + "hook_pattern", pattern)
    z = jnp.einsum("bhqk,bkhd->bqhd", pattern.astype(self.dtype), v, precision=prec)
    z = hook(p + "hook_z", z)
    return nn.Dense(cfg.n_embd, dtype=self.dtype, precision=prec, name="c_proj")(
        z.reshape(batch, pos, cfg.n_embd))


class MLP(nn.Module):
  config: GPT2Config
  layer_idx: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, hook):
    cfg = self.config
    p = f"blocks.{self.layer_idx}.mlp."
    prec = _precision(self.dtype)
    pre = hook(p + "hook_pre", nn.Dense(cfg.d_mlp, dtype=self.dtype, precision=prec,
                                        name="c_fc")(x))
    post = hook(p + "hook_post", activation_fn(cfg.activation_function)(pre))
    return nn.Dense(cfg.n_embd, dtype=self.dtype, precision=prec, name="c_proj")(post)


class Block(nn.Module):
  config: GPT2Config
  layer_idx: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, hook):
    cfg = self.config
    p = f"blocks.{self.layer_idx}."
    x = hook(p + "hook_resid_pre", x)
    h = LayerNorm(cfg.layer_norm_epsilon, p + "ln1.", self.dtype, name="ln_1")(x, hook)
    attn_out = hook(p + "hook_attn_out",
                    Attention(cfg, self.layer_idx, self.dtype, name="attn")(h, hook))
    x = hook(p + "hook_resid_mid", x + attn_out)
    h = LayerNorm(cfg.layer_norm_epsilon, p + "ln2.", self.dtype, name="ln_2")(x, hook)
    mlp_out = hook(p + "hook_mlp_out", MLP(cfg, self.layer_idx, self.dtype, name="mlp")(h, hook))
    return hook(p + "hook_resid_post", x + mlp_out)


class GPT2LM(nn.Module):
  """tokens [batch, pos] int32 -> logits [batch, pos, vocab] float32.

  With `stop_at_layer=l` returns the residual stream entering block l (TransformerLens
  semantics; l = n_layer gives the stream after the last block, before ln_final) instead of
  logits.
  """
  config: GPT2Config
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, hook=no_hook, stop_at_layer=None):
    cfg = self.config
    wte = nn.Embed(cfg.vocab_size, cfg.n_embd, dtype=self.dtype, name="wte")
    wpe = nn.Embed(cfg.n_positions, cfg.n_embd, dtype=self.dtype, name="wpe")
    embed = hook("hook_embed", wte(tokens))
    pos_embed = hook("hook_pos_embed", wpe(jnp.arange(tokens.shape[1]))[None])
    x = embed + pos_embed
    for layer in range(cfg.n_layer):
      if stop_at_layer is not None and layer >= stop_at_layer:
        return x
      x = Block(cfg, layer, self.dtype, name=f"h_{layer}")(x, hook)
    if stop_at_layer is not None:   # == n_layer: the residual stream after the last block
      return x
    x = LayerNorm(cfg.layer_norm_epsilon, "ln_final.", self.dtype, name="ln_f")(x, hook)
    prec = _precision(self.dtype)
    if cfg.tie_word_embeddings:
      logits = jnp.einsum("bpd,vd->bpv", x, wte.embedding.astype(self.dtype), precision=prec)
    else:
      logits = nn.Dense(cfg.vocab_size, use_bias=cfg.unembed_bias, dtype=self.dtype,
                        precision=prec, name="lm_head")(x)
    return logits.astype(jnp.float32)


def hook_names(config: GPT2Config) -> list[str]:
  """Every hook point, in forward order."""
  names = ["hook_embed", "hook_pos_embed"]
  for l in range(config.n_layer):
    p = f"blocks.{l}."
    names += [p + "hook_resid_pre", p + "ln1.hook_scale", p + "ln1.hook_normalized",
              p + "attn.hook_q", p + "attn.hook_k", p + "attn.hook_v",
              p + "attn.hook_attn_scores", p + "attn.hook_pattern", p + "attn.hook_z",
              p + "hook_attn_out", p + "hook_resid_mid", p + "ln2.hook_scale",
              p + "ln2.hook_normalized", p + "mlp.hook_pre", p + "mlp.hook_post",
              p + "hook_mlp_out", p + "hook_resid_post"]
  return names + ["ln_final.hook_scale", "ln_final.hook_normalized"]
