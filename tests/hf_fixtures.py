"""Random-weight HF GPT-2 checkpoints written to disk, the reference for converter tests."""
import json
import os

import numpy as np


def hf_config(**overrides):
  from transformers import GPT2Config
  kwargs = dict(n_layer=3, n_embd=64, n_head=4, n_positions=32, vocab_size=211, n_inner=96,
                bos_token_id=0, eos_token_id=0)
  kwargs.update(overrides)
  return GPT2Config(**kwargs)


def random_hf_model(config, seed=0):
  import torch
  from transformers import GPT2LMHeadModel
  torch.manual_seed(seed)
  config._attn_implementation = "eager"
  model = GPT2LMHeadModel(config).eval()
  # Default init has zero biases and unit LayerNorms; randomize them so a mapping error
  # in any tensor shows up.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(".bias") or "ln_" in name:
        p.add_(0.1 * torch.randn_like(p))
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
    state = {k: v.clone() for k, v in model.state_dict().items()}
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


def reference_activations(model, tokens):
  """HF forward with torch hooks capturing the TransformerLens-named activations."""
  import torch
  cache, handles = {}, []
  blocks = model.transformer.h
  for l, block in enumerate(blocks):
    def save(name):
      return lambda mod, inp, out: cache.__setitem__(name, (out[0] if isinstance(out, tuple)
                                                            else out).detach().numpy())
    handles.append(block.ln_1.register_forward_pre_hook(
        lambda mod, inp, l=l: cache.__setitem__(f"blocks.{l}.hook_resid_pre",
                                                inp[0].detach().numpy())))
    handles.append(block.ln_2.register_forward_pre_hook(
        lambda mod, inp, l=l: cache.__setitem__(f"blocks.{l}.hook_resid_mid",
                                                inp[0].detach().numpy())))
    handles.append(block.attn.register_forward_hook(save(f"blocks.{l}.hook_attn_out")))
    handles.append(block.mlp.c_fc.register_forward_hook(save(f"blocks.{l}.mlp.hook_pre")))
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
