"""One decoder-only transformer as Flax (linen) modules, with TransformerLens hook points.

The config decides the architecture (ucore.models.config): GPT-2 (learned positions, sequential
residual) or GPT-NeoX/Pythia (rotary on a fraction of each head, parallel or sequential
residual, attention biases on/off, untied unembedding). Exact or tanh GELU and the LayerNorm
epsilon come from the config for both.

The parameter tree uses the same names for every architecture — GPT-2's HuggingFace module
names (wte, wpe, h_{l}/{ln_1,attn/{c_attn,c_proj},ln_2,mlp/{c_fc,c_proj}}, ln_f, lm_head) — so
weight analyses read any model alike. Kernels are [in, out]; c_attn packs [q | k | v] along
the output axis, each head-major (GPT-2's layout; the NeoX converter reorders NeoX's per-head
packing into it). A NeoX model has no wpe.

Every hook point calls `hook(name, x)`, which may replace `x` (an intervention) and may record it
(a cache entry). `hook` is a plain Python object created inside the jitted function, so caching
and interventions cost nothing when not requested. A hook may also say which names it uses
(`hook.wants(name)`): attention then runs fused (jax.nn.dot_product_attention) unless the
pattern or the scores are wanted.
"""
import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from ucore.models.config import LMConfig


def no_hook(name, x):
  del name
  return x


no_hook.wants = lambda name: False


def wants(hook, name: str) -> bool:
  """Whether `hook` reads or replaces `name`; a hook that cannot say wants every name."""
  w = getattr(hook, "wants", None)
  return True if w is None else bool(w(name))


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
  raise ValueError(f"unsupported activation {name}")  # LMConfig validates earlier


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


def rotary(x, rotary_dim: int, base: float):
  """GPT-NeoX rotary embedding of x [batch, pos, head, d_head] on its first rotary_dim dims
  (pairs (i, i + rotary_dim/2), "rotate_half"), positions 0..pos-1, in float32."""
  if rotary_dim == 0:
    return x
  pos = x.shape[1]
  inv_freq = 1.0 / (base ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / rotary_dim))
  freqs = np.arange(pos, dtype=np.float32)[:, None] * inv_freq.astype(np.float32)[None]
  emb = np.concatenate([freqs, freqs], axis=-1)[None, :, None, :]
  cos, sin = jnp.asarray(np.cos(emb)), jnp.asarray(np.sin(emb))
  x32 = x.astype(jnp.float32)
  x_rot, x_pass = x32[..., :rotary_dim], x32[..., rotary_dim:]
  half = rotary_dim // 2
  rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
  return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], axis=-1).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class HookOptions:
  """TransformerLens's opt-in hook points (off by default: they cost memory and FLOPs).

  attn_result: blocks.L.attn.hook_result [batch, pos, head, d_model], each head's output.
  attn_in: blocks.L.hook_attn_in [batch, pos, head, d_model], resid_pre copied per head.
  split_qkv_input: blocks.L.hook_q_input / hook_k_input / hook_v_input, one copy each.
  mlp_in: blocks.L.hook_mlp_in [batch, pos, d_model], the stream entering ln2.
  (With per-head inputs, ln1's hooks hold [batch, pos, head, 1|d_model], as in TransformerLens.)
  """
  attn_result: bool = False
  attn_in: bool = False
  split_qkv_input: bool = False
  mlp_in: bool = False


class DenseParams(nn.Module):
  """A Dense layer's parameters (same names and initialisers as nn.Dense), for layers whose
  kernel is used per head."""
  features_in: int
  features_out: int
  use_bias: bool = True

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.features_in, self.features_out), jnp.float32)
    bias = (self.param("bias", nn.initializers.zeros, (self.features_out,), jnp.float32)
            if self.use_bias else None)
    return kernel, bias


class Attention(nn.Module):
  """x: [batch, pos, d_model], or [3, batch, pos, head, d_model] per-head query/key/value
  inputs (TransformerLens's attn_in / split_qkv_input)."""
  config: LMConfig
  layer_idx: int
  dtype: jnp.dtype = jnp.float32
  options: HookOptions = HookOptions()

  @nn.compact
  def __call__(self, x, hook):
    cfg = self.config
    p = f"blocks.{self.layer_idx}.attn."
    prec = _precision(self.dtype)
    H, dh, D = cfg.n_head, cfg.d_head, cfg.n_embd
    w_qkv, b_qkv = DenseParams(D, 3 * D, cfg.attention_bias, name="c_attn")()
    w_qkv = w_qkv.astype(self.dtype).reshape(D, 3, H, dh)
    if x.ndim == 3:
      q, k, v = jnp.einsum("bpd,dthe->tbphe", x, w_qkv, precision=prec)
    else:
      q, k, v = (jnp.einsum("bphd,dhe->bphe", x[t], w_qkv[:, t], precision=prec)
                 for t in range(3))
    if b_qkv is not None:
      b = b_qkv.astype(self.dtype).reshape(3, H, dh)
      q, k, v = q + b[0], k + b[1], v + b[2]
    q = hook(p + "hook_q", q)
    k = hook(p + "hook_k", k)
    v = hook(p + "hook_v", v)
    if cfg.rotary_dim:
      q = hook(p + "hook_rot_q", rotary(q, cfg.rotary_dim, cfg.rotary_base))
      k = hook(p + "hook_rot_k", rotary(k, cfg.rotary_dim, cfg.rotary_base))
    # Scores and softmax in float32 whatever the compute dtype (a 16-bit forward keeps its
    # normalisations in float32: LayerNorm above, softmax here; HF's reorder_and_upcast_attn
    # asks for the same). Products of bf16/fp16 q, k are exact in float32.
    if not (wants(hook, p + "hook_attn_scores") or wants(hook, p + "hook_pattern")):
      z = self._fused(q, k, v, prec)
    else:
      z = self._explicit(q, k, v, hook, p, prec)
    z = hook(p + "hook_z", z)
    w_o, b_o = DenseParams(D, D, cfg.attention_bias, name="c_proj")()
    w_o = w_o.astype(self.dtype)
    if self.options.attn_result:
      result = hook(p + "hook_result", jnp.einsum("bphe,hed->bphd", z, w_o.reshape(H, dh, D),
                                                  precision=prec))
      out = result.sum(axis=2)
    else:
      out = jnp.einsum("bpf,fd->bpd", z.reshape(*z.shape[:2], D), w_o, precision=prec)
    return out if b_o is None else out + b_o.astype(self.dtype)

  def _scale(self) -> float:
    cfg, s = self.config, 1.0
    if cfg.scale_attn_weights:
      s /= float(cfg.d_head) ** 0.5
    if cfg.scale_attn_by_inverse_layer_idx:
      s /= float(self.layer_idx + 1)
    return s

  def _fused(self, q, k, v, prec):
    """Causal attention without materialising hookable scores: cuDNN where JAX supports it
    (bf16/fp16 on recent NVIDIA GPUs), else XLA; logits and softmax in float32 either way.
    The matmul precision scope keeps float32 exact (no TF32) inside the library call."""
    scope = (jax.default_matmul_precision("highest") if prec == jax.lax.Precision.HIGHEST
             else contextlib.nullcontext())
    with scope:
      return jax.nn.dot_product_attention(q, k, v, scale=self._scale(), is_causal=True)

  def _explicit(self, q, k, v, hook, p, prec):
    """Scores, mask and softmax spelled out (float32): the hook points attn_scores and pattern."""
    cfg = self.config
    f32 = jnp.float32
    scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(f32), k.astype(f32), precision=prec)
    if cfg.scale_attn_weights:
      scores = scores / jnp.asarray(float(cfg.d_head) ** 0.5, f32)
    if cfg.scale_attn_by_inverse_layer_idx:
      scores = scores / jnp.asarray(float(self.layer_idx + 1), f32)
    pos = scores.shape[-1]
    causal = jnp.tril(jnp.ones((pos, pos), dtype=bool))
    scores = jnp.where(causal, scores, -jnp.inf)   # TransformerLens: masked scores are -inf
    scores = hook(p + "hook_attn_scores", scores)
    pattern = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    pattern = hook(p + "hook_pattern", pattern)
    return jnp.einsum("bhqk,bkhd->bqhd", pattern.astype(self.dtype), v, precision=prec)


class MLP(nn.Module):
  config: LMConfig
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
  config: LMConfig
  layer_idx: int
  dtype: jnp.dtype = jnp.float32
  options: HookOptions = HookOptions()

  @nn.compact
  def __call__(self, x, hook):
    cfg, opt = self.config, self.options
    p = f"blocks.{self.layer_idx}."
    x = hook(p + "hook_resid_pre", x)
    ln_1 = LayerNorm(cfg.layer_norm_epsilon, p + "ln1.", self.dtype, name="ln_1")
    if opt.attn_in or opt.split_qkv_input:   # per-head copies of resid_pre
      per_head = jnp.broadcast_to(x[:, :, None], (*x.shape[:2], cfg.n_head, x.shape[-1]))
      attn_in = hook(p + "hook_attn_in", per_head) if opt.attn_in else per_head
      inputs = ([hook(p + f"hook_{t}_input", per_head) for t in "qkv"]
                if opt.split_qkv_input else [attn_in] * 3)
      h = jnp.stack([ln_1(t, hook) for t in inputs])
    else:
      h = ln_1(x, hook)
    attn_out = hook(p + "hook_attn_out",
                    Attention(cfg, self.layer_idx, self.dtype, opt, name="attn")(h, hook))
    if cfg.parallel_residual:   # both sublayers read resid_pre; no resid_mid (TransformerLens)
      mlp_in = x
    else:
      x = mlp_in = hook(p + "hook_resid_mid", x + attn_out)
    if opt.mlp_in:
      mlp_in = hook(p + "hook_mlp_in", mlp_in)
    h = LayerNorm(cfg.layer_norm_epsilon, p + "ln2.", self.dtype, name="ln_2")(mlp_in, hook)
    mlp_out = hook(p + "hook_mlp_out", MLP(cfg, self.layer_idx, self.dtype, name="mlp")(h, hook))
    if cfg.parallel_residual:
      return hook(p + "hook_resid_post", (mlp_out + attn_out) + x)   # HF's order of sums
    return hook(p + "hook_resid_post", x + mlp_out)


class TransformerLM(nn.Module):
  """tokens [batch, pos] int32 -> logits [batch, pos, vocab] float32.

  With `stop_at_layer=l` returns the residual stream entering block l (TransformerLens
  semantics; l = n_layer gives the stream after the last block, before ln_final) instead of
  logits.
  """
  config: LMConfig
  dtype: jnp.dtype = jnp.float32
  options: HookOptions = HookOptions()

  @nn.compact
  def __call__(self, tokens, hook=no_hook, stop_at_layer=None):
    cfg = self.config
    tokens = hook("hook_tokens", tokens)
    wte = nn.Embed(cfg.vocab_size, cfg.n_embd, dtype=self.dtype, name="wte")
    x = hook("hook_embed", wte(tokens))
    if cfg.positional == "learned":
      wpe = nn.Embed(cfg.n_positions, cfg.n_embd, dtype=self.dtype, name="wpe")
      x = x + hook("hook_pos_embed",   # [batch, pos, d] as TransformerLens caches it
                   jnp.broadcast_to(wpe(jnp.arange(tokens.shape[1]))[None], x.shape))
    for layer in range(cfg.n_layer):
      if stop_at_layer is not None and layer >= stop_at_layer:
        return x
      x = Block(cfg, layer, self.dtype, self.options, name=f"h_{layer}")(x, hook)
    if stop_at_layer is not None:   # == n_layer: the residual stream after the last block
      return x
    x = LayerNorm(cfg.layer_norm_epsilon, "ln_final.", self.dtype, name="ln_f")(x, hook)
    x = hook("unembed.hook_in", x)
    prec = _precision(self.dtype)
    if cfg.tie_word_embeddings:
      logits = jnp.einsum("bpd,vd->bpv", x, wte.embedding.astype(self.dtype), precision=prec)
    else:
      logits = nn.Dense(cfg.vocab_size, use_bias=cfg.unembed_bias, dtype=self.dtype,
                        precision=prec, name="lm_head")(x)
    return hook("unembed.hook_out", logits.astype(jnp.float32))


def hook_names(config: LMConfig, options: HookOptions = HookOptions()) -> list[str]:
  """Every hook point, in forward order."""
  names = ["hook_tokens", "hook_embed"] + (
      ["hook_pos_embed"] if config.positional == "learned" else [])
  for l in range(config.n_layer):
    p = f"blocks.{l}."
    names += [p + "hook_resid_pre"]
    names += [p + "hook_attn_in"] if options.attn_in else []
    names += [p + f"hook_{t}_input" for t in "qkv"] if options.split_qkv_input else []
    names += [p + "ln1.hook_scale", p + "ln1.hook_normalized",
              p + "attn.hook_q", p + "attn.hook_k", p + "attn.hook_v"]
    if config.rotary_dim:
      names += [p + "attn.hook_rot_q", p + "attn.hook_rot_k"]
    names += [p + "attn.hook_attn_scores", p + "attn.hook_pattern", p + "attn.hook_z"]
    names += [p + "attn.hook_result"] if options.attn_result else []
    names += [p + "hook_attn_out"]
    if not config.parallel_residual:
      names += [p + "hook_resid_mid"]
    names += [p + "hook_mlp_in"] if options.mlp_in else []
    names += [p + "ln2.hook_scale", p + "ln2.hook_normalized", p + "mlp.hook_pre",
              p + "mlp.hook_post", p + "hook_mlp_out", p + "hook_resid_post"]
  return names + ["ln_final.hook_scale", "ln_final.hook_normalized", "unembed.hook_in",
                   "unembed.hook_out"]
