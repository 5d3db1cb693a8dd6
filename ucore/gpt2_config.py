"""GPT-2 model configuration: the fields of HF `GPT2Config` that change the computation.

`from_hf_dict` reads a HuggingFace config.json dict. Every field that changes the forward pass
is either honoured or refused with a UserError; fields that only matter for training dropout,
initialisation, generation or other heads are ignored by an explicit list.
"""
import dataclasses
import logging

from ucore.errors import UserError

ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu", "silu", "swish",
               "quick_gelu", "tanh")

# Fields that do not change inference activations: dropout, init, generation, bookkeeping.
_IGNORED_HF_FIELDS = frozenset("""
attn_pdrop embd_pdrop resid_pdrop summary_first_dropout summary_activation summary_proj_to_labels
summary_type summary_use_proj initializer_range gradient_checkpointing use_cache torch_dtype dtype
transformers_version _name_or_path architectures bos_token_id eos_token_id pad_token_id
task_specific_params n_ctx model_type output_past _attn_implementation_autoset
attn_implementation _attn_implementation id2label label2id return_dict output_hidden_states
output_attentions torchscript tie_encoder_decoder chunk_size_feed_forward problem_type
tokenizer_class prefix sep_token_id decoder_start_token_id max_length min_length do_sample
early_stopping num_beams num_beam_groups diversity_penalty temperature top_k top_p typical_p
repetition_penalty length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size
bad_words_ids num_return_sequences output_scores return_dict_in_generate forced_bos_token_id
forced_eos_token_id remove_invalid_values exponential_decay_length_penalty suppress_tokens
begin_suppress_tokens finetuning_task cross_attention_hidden_size is_decoder
use_bfloat16 tf_legacy_loss num_labels
""".split())

# Fields we cannot honour; refused when set to anything but their neutral value.
_REFUSED_IF_SET = {
    "add_cross_attention": (False, None),
    "pruned_heads": ({}, None),
    "is_encoder_decoder": (False, None),
}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  n_layer: int = 12
  n_embd: int = 768
  n_head: int = 12
  n_positions: int = 1024
  d_mlp: int = 3072                 # HF n_inner (None there means 4 * n_embd)
  vocab_size: int = 50257
  activation_function: str = "gelu_new"
  layer_norm_epsilon: float = 1e-5
  scale_attn_weights: bool = True
  scale_attn_by_inverse_layer_idx: bool = False
  reorder_and_upcast_attn: bool = False
  tie_word_embeddings: bool = True
  # Set by TransformerLens-style processing: an unembedding bias (folded final LayerNorm bias).
  unembed_bias: bool = False

  def __post_init__(self):
    for name in ("n_layer", "n_embd", "n_head", "n_positions", "d_mlp", "vocab_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"model config field {name}={value!r} must be a positive integer")
    if self.n_embd % self.n_head:
      raise UserError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
    if self.activation_function not in ACTIVATIONS:
      raise UserError(f"activation_function={self.activation_function!r} is not supported; "
                      f"supported: {', '.join(ACTIVATIONS)}")
    if not self.layer_norm_epsilon > 0:
      raise UserError(f"layer_norm_epsilon={self.layer_norm_epsilon!r} must be > 0")

  @property
  def d_head(self) -> int:
    return self.n_embd // self.n_head

  @property
  def n_neurons(self) -> int:
    return self.n_layer * self.d_mlp

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "GPT2Config":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
      raise UserError(f"model config has unknown fields {sorted(unknown)}; "
                      "it was not written by this toolkit")
    return cls(**d)

  @classmethod
  def from_hf_dict(cls, hf: dict) -> "GPT2Config":
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
      raise UserError(f"config.json has model_type={model_type!r}; only GPT-2 (model_type "
                      "'gpt2') checkpoints are supported")
    for key, neutral in _REFUSED_IF_SET.items():
      if key in hf and hf[key] not in neutral:
        raise UserError(f"config.json sets {key}={hf[key]!r}, which this toolkit cannot "
                        "honour; use a plain GPT-2 language-model checkpoint")
    mapping = {
        "n_layer": "n_layer", "n_embd": "n_embd", "n_head": "n_head",
        "n_positions": "n_positions", "vocab_size": "vocab_size",
        "activation_function": "activation_function",
        "layer_norm_epsilon": "layer_norm_epsilon", "scale_attn_weights": "scale_attn_weights",
        "scale_attn_by_inverse_layer_idx": "scale_attn_by_inverse_layer_idx",
        "reorder_and_upcast_attn": "reorder_and_upcast_attn",
        "tie_word_embeddings": "tie_word_embeddings",
    }
    kwargs = {}
    for hf_key, our_key in mapping.items():
      if hf_key in hf:
        kwargs[our_key] = hf[hf_key]
    n_inner = hf.get("n_inner")
    n_embd = kwargs.get("n_embd", cls.n_embd)
    kwargs["d_mlp"] = 4 * n_embd if n_inner is None else n_inner
    if "n_ctx" in hf and "n_positions" in hf and hf["n_ctx"] != hf["n_positions"]:
      raise UserError(f"config.json has n_ctx={hf['n_ctx']} != n_positions="
                      f"{hf['n_positions']}; cannot tell the context length")
    known = set(mapping) | {"n_inner"} | set(_REFUSED_IF_SET) | _IGNORED_HF_FIELDS
    unknown = sorted(k for k in hf if k not in known)
    if unknown:
      logging.warning("config.json fields not used by the GPT-2 forward pass: %s", unknown)
    return cls(**kwargs)
