"""ucore checkpoint directory (converted or trained) -> a HuggingFace model directory that
`transformers.AutoModelForCausalLM.from_pretrained` loads (GPT-2 -> GPT2LMHeadModel, GPT-NeoX ->
GPTNeoXForCausalLM) and that `python main.py convert` reads back bit-identically.

  python main.py export --model=runs/default/family/seed0/final --to=hf --workdir=hf/seed0

Written (float32, staged and renamed into place; ucore_export.json last inside it):
  config.json            HF config (below), model_type and architectures set
  model.safetensors      the weights, named and laid out by the converter's key maps
                         (converters/gpt2_keymap.py, neox_keymap.py) run backwards
                         (convert.INVERSE_TRANSFORMS: each a pure permutation)
  tokenizer files        vocab.json + merges.txt (GPT-2 BPE pair) or tokenizer.json (as the
                         checkpoint holds it), and tokenizer_config.json for AutoTokenizer
  ucore_export.json      source directory, its params fingerprint and manifest, sha256 of
                         every file written

Config fields (our field -> HF key; the tables are ucore.models.gpt2.HF_FIELDS and
ucore.models.neox.HF_FIELDS, the ones `convert` reads, inverted):
  GPT-2:    n_layer, n_embd, n_head, n_positions, vocab_size, activation_function,
            layer_norm_epsilon, tie_word_embeddings, scale_attn_weights,
            scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn -> same names;
            d_mlp -> n_inner (always written); n_positions also -> n_ctx (TransformerLens
            reads it).
  GPT-NeoX: n_layer -> num_hidden_layers, n_embd -> hidden_size, n_head ->
            num_attention_heads, d_mlp -> intermediate_size, n_positions ->
            max_position_embeddings, vocab_size, activation_function -> hidden_act,
            layer_norm_epsilon -> layer_norm_eps, tie_word_embeddings, parallel_residual ->
            use_parallel_residual, attention_bias; rotary_pct / rotary_base ->
            rope_parameters {rope_type: default, partial_rotary_factor, rope_theta} (transformers
            5) and the same values as rotary_pct / rotary_emb_base (transformers 4).
  Both: bos_token_id / eos_token_id = the tokenizer's <|endoftext|> id when it has one.
  Every activation this toolkit runs (gelu_new, gelu, relu, ...) is an HF ACT2FN name, so a
  ReLU GPT-2 is activation_function="relu".
Refused (one-line error, nothing written): unembed_bias — a TransformerLens-processed
checkpoint (`convert --process=transformer_lens`) carries an unembedding bias (the folded final
LayerNorm bias), and neither GPT2LMHeadModel nor GPTNeoXForCausalLM has an lm_head bias; export
the unprocessed checkpoint instead (TransformerLens processes it again on load).
"""
import logging
import os

import numpy as np

from converters import convert as conv
from converters import hf_files
from ucore.jobs import atomic
from ucore.jobs.errors import UserError
from ucore.models import gpt2, neox
from ucore.models import tokenizer as tok

FORMATS = ("hf",)
EXPORT_MANIFEST = "ucore_export.json"
EXPORT_FORMAT = "ucore-hf-export/1"
HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM"}
TOKENIZER_CONFIG = "tokenizer_config.json"


def check_expressible(config) -> None:
  """Refuses what the transformers classes cannot compute."""
  if config.architecture not in HF_CLASSES:
    raise UserError(f"architecture {config.architecture!r} has no HF export; supported: "
                    f"{', '.join(HF_CLASSES)}")
  if config.unembed_bias:
    raise UserError(f"the checkpoint has an unembedding bias (TransformerLens-processed "
                    f"weights), which {HF_CLASSES[config.architecture]} cannot hold; export the "
                    "unprocessed checkpoint (convert without --process)")


def hf_config(config, special_id=None) -> dict:
  """Our config -> the HF config.json dict (see the module docstring)."""
  check_expressible(config)
  if config.architecture == "gpt2":
    out = {hf: getattr(config, ours) for hf, ours in gpt2.HF_FIELDS.items()}
    out["n_inner"] = config.d_mlp
    out["n_ctx"] = config.n_positions   # TransformerLens's GPT-2 config reads n_ctx
  else:
    out = {hf: getattr(config, ours) for hf, ours in neox.HF_FIELDS.items()}
    out["rope_parameters"] = {"rope_type": "default", "rope_theta": float(config.rotary_base),
                              "partial_rotary_factor": float(config.rotary_pct)}
    out["rotary_pct"], out["rotary_emb_base"] = (float(config.rotary_pct),
                                                 float(config.rotary_base))
  out.update(model_type=config.architecture, architectures=[HF_CLASSES[config.architecture]],
             dtype="float32")
  if special_id is not None:
    out["bos_token_id"] = out["eos_token_id"] = int(special_id)
  return out


def hf_tensors(config, params) -> dict:
  """Flax params -> {HF key: float32 array}, every leaf used exactly once."""
  keymap = conv.KEYMAPS[config.architecture]
  tensors, used = {}, set()
  for hf_key, path, spec, transform in keymap.table(config):
    value = np.asarray(conv._get(params, path), np.float32)
    tensors[keymap.PREFIX + hf_key] = conv.INVERSE_TRANSFORMS[transform](config, value)
    used.add(path)
    if tensors[keymap.PREFIX + hf_key].shape != conv.shape_of(spec, config):
      raise UserError(f"parameter {path} has shape {value.shape}; the config implies "
                      f"{conv.shape_of(spec, config)} for {hf_key}")
  if not config.tie_word_embeddings:
    tensors[keymap.LM_HEAD_KEYS[0]] = np.ascontiguousarray(
        np.asarray(params["lm_head"]["kernel"], np.float32).T)
    used.add("lm_head/kernel")
  left = sorted(set(_paths(params)) - used)
  if left:
    raise UserError(f"parameters {left[:5]} have no place in {HF_CLASSES[config.architecture]}")
  return tensors


def _paths(tree, prefix=""):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _paths(v, f"{prefix}{k}/")
    else:
      yield f"{prefix}{k}"


def _write_tokenizer(files, staging: str, config) -> dict:
  """Copies the tokenizer and writes tokenizer_config.json; returns that config."""
  special = tok.special_id(files)
  cfg = {"model_max_length": config.n_positions, "add_prefix_space": False,
         "clean_up_tokenization_spaces": False}
  if special is not None:
    cfg.update(bos_token=tok.ENDOFTEXT, eos_token=tok.ENDOFTEXT, unk_token=tok.ENDOFTEXT)
  if files.tokenizer_json:
    import shutil
    shutil.copyfile(files.tokenizer_json, os.path.join(staging, tok.TOKENIZER_JSON))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"   # the file is the whole tokenizer
  else:
    tok.copy_files(files, staging)                       # vocab.json + merges.txt
    cfg["tokenizer_class"] = "GPT2Tokenizer"
  atomic.write_json(os.path.join(staging, TOKENIZER_CONFIG), cfg)
  return cfg


def export(model_dir: str, workdir: str, to: str = "hf") -> dict:
  """Exports the checkpoint in `model_dir` into `workdir`; returns the export manifest."""
  from safetensors.numpy import save_file
  from ucore.models import hooked
  from ucore import __version__
  if to not in FORMATS:
    raise UserError(f"--to={to!r}; supported: {', '.join(FORMATS)}")
  if not model_dir:
    raise UserError("--model is required: a converted or trained checkpoint directory")
  src = os.path.abspath(model_dir)
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise UserError(f"output directory {workdir} is not empty; choose a new --workdir or "
                    "remove it")
  if workdir == src or workdir.startswith(src + os.sep):
    raise UserError(f"--workdir {workdir} lies inside the model directory {src}")
  hooked.read_manifest(src)             # a complete checkpoint, before loading anything
  model = hooked.load_model(src)        # fingerprint verified
  config = model.config
  check_expressible(config)
  files = tok.files_in_dir(os.path.join(src, hooked.TOKENIZER))
  if files is None:
    logging.warning("%s has no tokenizer/: the export holds no tokenizer files "
                    "(AutoTokenizer will not load it)", src)
  special = tok.special_id(files) if files is not None else None
  tensors = hf_tensors(config, model.params)
  with atomic.staged_dir(workdir) as staging:
    atomic.write_json(os.path.join(staging, "config.json"), hf_config(config, special))
    save_file(tensors, os.path.join(staging, hf_files.SAFETENSORS), metadata={"format": "pt"})
    if files is not None:
      _write_tokenizer(files, staging, config)
    manifest = {
        "format": EXPORT_FORMAT, "to": to, "toolkit_version": __version__,
        "hf_class": HF_CLASSES[config.architecture],
        "source": {"directory": src, "params_fingerprint": model.fingerprint,
                   "manifest": model.manifest},
        "tokenizer_sha256": files.sha256() if files is not None else None,
        "sha256": {f: atomic.sha256_file(os.path.join(staging, f))
                   for f in sorted(os.listdir(staging))},
    }
    atomic.write_json(os.path.join(staging, EXPORT_MANIFEST), manifest)   # last: complete
  logging.info("exported %s -> %s (%s, %d tensors)", src, workdir, manifest["hf_class"],
               len(tensors))
  return manifest

