"""The model configuration every architecture shares.

One Flax transformer (ucore/models/transformer.py) runs every architecture; an architecture is a
config class that fixes how that transformer computes. Every config exposes the same
attributes, whether they are stored fields or constants of the architecture:

  n_layer n_embd n_head d_head n_positions d_mlp vocab_size n_neurons activation_function
  layer_norm_epsilon tie_word_embeddings unembed_bias         (stored by every architecture)
  positional ("learned" | "rotary")  rotary_dim  rotary_base  parallel_residual
  attention_bias  scale_attn_weights  scale_attn_by_inverse_layer_idx  reorder_and_upcast_attn

A converted checkpoint's config.json holds `to_dict()`: the stored fields plus
`architecture`. Reading a config.json into the right architecture is ucore.models.registry's
job (this module is the base the architectures import; it imports none of them).
"""
import dataclasses
import logging
from typing import ClassVar

from ucore.jobs.errors import UserError

ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu", "silu", "swish",
               "quick_gelu", "tanh")

# HF config fields that do not change inference activations (dropout, init, generation,
# bookkeeping), shared by every architecture.
IGNORED_HF_FIELDS = frozenset("""
initializer_range gradient_checkpointing use_cache torch_dtype dtype
transformers_version _name_or_path architectures bos_token_id eos_token_id pad_token_id
task_specific_params model_type output_past _attn_implementation_autoset
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

# Fields no architecture here can honour; refused when set to anything but a neutral value.
REFUSED_IF_SET = {
    "add_cross_attention": (False, None),
    "pruned_heads": ({}, None),
    "is_encoder_decoder": (False, None),
}


@dataclasses.dataclass(frozen=True)
class LMConfig:
  """Fields stored by every architecture (defaults: GPT-2 small)."""
  ARCHITECTURE: ClassVar[str] = ""
  MODEL_TYPES: ClassVar[tuple] = ()          # HF config.json model_type values

  n_layer: int = 12
  n_embd: int = 768
  n_head: int = 12
  n_positions: int = 1024
  d_mlp: int = 3072
  vocab_size: int = 50257
  activation_function: str = "gelu_new"
  layer_norm_epsilon: float = 1e-5
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

  @property
  def architecture(self) -> str:
    return self.ARCHITECTURE

  def to_dict(self) -> dict:
    return dict(dataclasses.asdict(self), architecture=self.ARCHITECTURE)

  @classmethod
  def from_dict(cls, d: dict) -> "LMConfig":
    """A config.json written by this toolkit (for this architecture)."""
    d = dict(d)
    arch = d.pop("architecture", cls.ARCHITECTURE)
    if arch != cls.ARCHITECTURE:
      raise UserError(f"model config is for architecture {arch!r}, not {cls.ARCHITECTURE!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
      raise UserError(f"model config has unknown fields {sorted(unknown)}; "
                      "it was not written by this toolkit")
    return cls(**d)

  @classmethod
  def from_hf_dict(cls, hf: dict) -> "LMConfig":
    """Each architecture reads its own HF config.json (GPT2Config, NeoXConfig)."""
    raise NotImplementedError(f"{cls.__name__} has no HF config reader; use an architecture's")


def read_hf_fields(hf: dict, mapping: dict, *, handled=(), ignored=frozenset(),
                   name: str = "") -> dict:
  """Shared parsing of a HF config.json: refuse what no architecture honours, copy the
  `mapping` (HF key -> our field) keys present, and warn about the keys nobody reads."""
  for key, neutral in REFUSED_IF_SET.items():
    if key in hf and hf[key] not in neutral:
      raise UserError(f"config.json sets {key}={hf[key]!r}, which this toolkit cannot "
                      f"honour; use a plain {name} language-model checkpoint")
  kwargs = {ours: hf[key] for key, ours in mapping.items() if key in hf}
  known = set(mapping) | set(handled) | set(REFUSED_IF_SET) | IGNORED_HF_FIELDS | set(ignored)
  unknown = sorted(k for k in hf if k not in known)
  if unknown:
    logging.warning("config.json fields not used by the %s forward pass: %s", name, unknown)
  return kwargs
