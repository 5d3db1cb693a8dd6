"""Random-weight HF GPT-2 and GPT-NeoX checkpoints written to disk, the reference for converter
tests."""
import json
import os

import numpy as np


def hf_config(**overrides):
  from transformers import GPT2Config
  kwargs = dict(n_layer=3, n_embd=64, n_head=4, n_positions=32, vocab_size=211, n_inner=96,
                bos_token_id=0, eos_token_id=0)
  kwargs.update(overrides)
  return GPT2Config(**kwargs)


def neox_config(**overrides):
  """A tiny GPTNeoXConfig (legacy spellings rotary_pct / rotary_emb_base are accepted too)."""
  from transformers import GPTNeoXConfig
  kwargs = dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4,
                intermediate_size=96, max_position_embeddings=32, vocab_size=211,
                rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
                bos_token_id=0, eos_token_id=0)
  kwargs.update(overrides)
  return GPTNeoXConfig(**kwargs)


def random_hf_model(config, seed=0):
  import torch
  from transformers import GPT2LMHeadModel, GPTNeoXForCausalLM
  torch.manual_seed(seed)
  config._attn_implementation = "eager"
  cls = GPTNeoXForCausalLM if config.model_type == "gpt_neox" else GPT2LMHeadModel
  model = cls(config).eval()
  # Default init has zero biases and unit LayerNorms; randomize them so a mapping error
  # in any tensor shows up.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(".bias") or "ln_" in name or "layernorm" in name or "layer_norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


def random_hf_model_direct(config, seed=0):
  """random_hf_model's distribution, drawn once per parameter: for the full-size models, where
  transformers' own init (GPT-2's Conv1D weights are drawn three times over) costs more than
  the test. Weights ~ N(0, initializer_range), GPT-2's residual projections (attn/mlp c_proj)
  ~ N(0, initializer_range / sqrt(2 n_layer)) as transformers draws them; biases ~ 0.1 N(0, 1),
  LayerNorm scales ~ 1 + 0.1 N(0, 1), LayerNorm shifts ~ 0.1 N(0, 1), as random_hf_model
  perturbs them. Buffers (causal masks, rotary frequencies) are built by the constructors."""
  import math
  import torch
  from transformers import GPT2LMHeadModel, GPTNeoXForCausalLM
  from transformers.initialization import no_init_weights
  config._attn_implementation = "eager"
  cls = GPTNeoXForCausalLM if config.model_type == "gpt_neox" else GPT2LMHeadModel
  with no_init_weights():
    model = cls(config)
  model.tie_weights()
  model.eval()
  gen = torch.Generator().manual_seed(seed)
  std = config.initializer_range
  with torch.no_grad():
    for name, p in model.named_parameters():   # a tied head is listed once
      if "ln_" in name or "layernorm" in name or "layer_norm" in name:
        p.normal_(0.0, 0.1, generator=gen)
        if name.endswith(".weight"):
          p.add_(1.0)
      elif name.endswith(".bias"):
        p.normal_(0.0, 0.1, generator=gen)
      elif config.model_type == "gpt2" and name.endswith("c_proj.weight"):
        p.normal_(0.0, std / math.sqrt(2 * config.n_layer), generator=gen)
      else:
        p.normal_(0.0, std, generator=gen)
  return model


def write_neox_legacy_bin(directory, model):
  """A Pythia-style hub checkpoint as transformers 4 wrote it: float16 pytorch_model.bin with
  `embed_out.weight` and the old buffers (attention.bias, masked_bias, rotary_emb.inv_freq),
  and a config.json with the legacy keys rotary_pct / rotary_emb_base."""
  import torch
  os.makedirs(directory, exist_ok=True)
  cfg = model.config
  head = cfg.hidden_size // cfg.num_attention_heads
  rot = int(head * cfg.rope_parameters["partial_rotary_factor"])
  n = cfg.max_position_embeddings
  state = {}
  for k, v in model.state_dict().items():
    state[k.replace("lm_head.", "embed_out.")] = v.detach().to(torch.float16)   # a copy
  for l in range(cfg.num_hidden_layers):
    p = f"gpt_neox.layers.{l}.attention."
    state[p + "bias"] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
    state[p + "masked_bias"] = torch.tensor(-1e9)
    state[p + "rotary_emb.inv_freq"] = 1.0 / (
        cfg.rope_parameters["rope_theta"] ** (torch.arange(0, rot, 2).float() / rot))
  torch.save(state, os.path.join(directory, "pytorch_model.bin"))
  legacy = {
      "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox",
      "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
      "hidden_act": cfg.hidden_act, "hidden_size": cfg.hidden_size,
      "initializer_range": 0.02, "intermediate_size": cfg.intermediate_size,
      "layer_norm_eps": cfg.layer_norm_eps,
      "max_position_embeddings": cfg.max_position_embeddings,
      "num_attention_heads": cfg.num_attention_heads,
      "num_hidden_layers": cfg.num_hidden_layers,
      "rotary_emb_base": cfg.rope_parameters["rope_theta"],
      "rotary_pct": cfg.rope_parameters["partial_rotary_factor"],
      "tie_word_embeddings": cfg.tie_word_embeddings, "torch_dtype": "float16",
      "transformers_version": "4.24.0", "use_cache": True,
      "use_parallel_residual": cfg.use_parallel_residual, "vocab_size": cfg.vocab_size}
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(legacy, f)
  return directory


def float16_rounded(model):
  """The model with every parameter rounded through float16 (what a float16 file holds)."""
  import torch
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(p.to(torch.float16).to(torch.float32))
  return model


def write_checkpoint(directory, model, fmt="safetensors"):
  """fmt: safetensors | bin | sharded (safetensors shards + index) | sharded_bin."""
  import torch
  os.makedirs(directory, exist_ok=True)
  if fmt == "safetensors":
    model.save_pretrained(directory)
  elif fmt == "sharded":
    model.save_pretrained(directory, max_shard_size="100KB")
    assert os.path.exists(os.path.join(directory, "model.safetensors.index.json"))
  elif fmt in ("bin", "sharded_bin"):
    model.config.to_json_file(os.path.join(directory, "config.json"))
    # One storage per tensor, as a clone of every tensor gives, without copying the others:
    # only a tensor sharing an earlier one's storage (a tied head) is cloned.
    state, seen = {}, set()
    for k, v in model.state_dict().items():
      ptr = v.untyped_storage().data_ptr()
      state[k] = v.clone() if ptr in seen else v
      seen.add(ptr)
    if fmt == "bin":
      torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    else:
      keys = sorted(state)
      halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
      weight_map = {}
      for i, part in enumerate(halves):
        fname = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: state[k] for k in part}, os.path.join(directory, fname))
        weight_map.update({k: fname for k in part})
      with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
  else:
    raise ValueError(fmt)
  return directory


def write_tokenizer_json(directory, texts, vocab_size=200, added=("  ",)):
  """A byte-level BPE trained on `texts`, saved as a HF tokenizer.json (what Pythia ships),
  with <|endoftext|> (id 0) and `added` tokens (the NeoX vocabulary adds whitespace runs)."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  if added:
    tok.add_tokens([AddedToken(t, normalized=False) for t in added])
  path = os.path.join(directory, "tokenizer.json")
  tok.save(path)
  return path


def reference_activations(model, tokens):
  """HF forward with torch hooks capturing the TransformerLens-named activations.
  (No hook_resid_mid for a parallel-residual NeoX: TransformerLens has none either.)"""
  import torch
  cache, handles = {}, []
  neox = model.config.model_type == "gpt_neox"
  blocks = model.gpt_neox.layers if neox else model.transformer.h
  for l, block in enumerate(blocks):
    def save(name):
      return lambda mod, inp, out: cache.__setitem__(name, (out[0] if isinstance(out, tuple)
                                                            else out).detach().numpy())
    ln_1, ln_2, attn = ((block.input_layernorm, block.post_attention_layernorm, block.attention)
                        if neox else (block.ln_1, block.ln_2, block.attn))
    fc = block.mlp.dense_h_to_4h if neox else block.mlp.c_fc
    handles.append(ln_1.register_forward_pre_hook(
        lambda mod, inp, l=l: cache.__setitem__(f"blocks.{l}.hook_resid_pre",
                                                inp[0].detach().numpy())))
    if not (neox and model.config.use_parallel_residual):
      handles.append(ln_2.register_forward_pre_hook(
          lambda mod, inp, l=l: cache.__setitem__(f"blocks.{l}.hook_resid_mid",
                                                  inp[0].detach().numpy())))
    handles.append(attn.register_forward_hook(save(f"blocks.{l}.hook_attn_out")))
    handles.append(fc.register_forward_hook(save(f"blocks.{l}.mlp.hook_pre")))
    handles.append(block.mlp.act.register_forward_hook(save(f"blocks.{l}.mlp.hook_post")))
    handles.append(block.mlp.register_forward_hook(save(f"blocks.{l}.hook_mlp_out")))
    handles.append(block.register_forward_hook(save(f"blocks.{l}.hook_resid_post")))
  try:
    with torch.no_grad():
      out = model(torch.tensor(np.asarray(tokens), dtype=torch.long), output_attentions=True)
  finally:
    for h in handles:
      h.remove()
  for l, pattern in enumerate(out.attentions):
    cache[f"blocks.{l}.attn.hook_pattern"] = pattern.numpy()
  return out.logits.numpy(), cache
