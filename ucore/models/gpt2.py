"""GPT-2 model configuration: the fields of HF `GPT2Config` that change the computation.

`from_hf_dict` reads a HuggingFace config.json dict. Every field that changes the forward pass
is either honoured or refused with a UserError; fields that only matter for training dropout,
initialisation, generation or other heads are ignored by an explicit list.
"""
import dataclasses

from ucore.jobs.errors import UserError
from ucore.models.config import LMConfig, read_hf_fields

# GPT-2-only fields that do not change inference activations (dropout, the summary head).
_IGNORED_HF_FIELDS = frozenset("""
attn_pdrop embd_pdrop resid_pdrop summary_first_dropout summary_activation summary_proj_to_labels
summary_type summary_use_proj n_ctx
""".split())

# HF GPT2Config key -> our field, copied as is (read by from_hf_dict, inverted by the HF
# export, converters/export_hf.py); n_inner -> d_mlp is read separately (None = 4 * n_embd).
HF_FIELDS = {
    "n_layer": "n_layer", "n_embd": "n_embd", "n_head": "n_head",
    "n_positions": "n_positions", "vocab_size": "vocab_size",
    "activation_function": "activation_function",
    "layer_norm_epsilon": "layer_norm_epsilon", "scale_attn_weights": "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx": "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn": "reorder_and_upcast_attn",
    "tie_word_embeddings": "tie_word_embeddings",
}


@dataclasses.dataclass(frozen=True)
class GPT2Config(LMConfig):
  ARCHITECTURE = "gpt2"
  MODEL_TYPES = ("gpt2",)

  scale_attn_weights: bool = True
  scale_attn_by_inverse_layer_idx: bool = False
  reorder_and_upcast_attn: bool = False

  # What GPT-2 fixes (see ucore.models.config).
  positional = "learned"
  rotary_dim = 0
  rotary_base = 10000.0
  parallel_residual = False
  attention_bias = True

  def to_dict(self) -> dict:
    # GPT-2 config.json files predate `architecture`; absent means GPT-2.
    d = super().to_dict()
    d.pop("architecture")
    return d

  @classmethod
  def from_hf_dict(cls, hf: dict) -> "GPT2Config":
    if hf.get("model_type", "gpt2") not in cls.MODEL_TYPES:
      raise UserError(f"config.json has model_type={hf.get('model_type')!r}, not GPT-2")
    kwargs = read_hf_fields(hf, HF_FIELDS, handled=("n_inner",), ignored=_IGNORED_HF_FIELDS,
                            name="GPT-2")
    n_inner = hf.get("n_inner")
    n_embd = kwargs.get("n_embd", cls.n_embd)
    kwargs["d_mlp"] = 4 * n_embd if n_inner is None else n_inner
    if "n_ctx" in hf and "n_positions" in hf and hf["n_ctx"] != hf["n_positions"]:
      raise UserError(f"config.json has n_ctx={hf['n_ctx']} != n_positions="
                      f"{hf['n_positions']}; cannot tell the context length")
    return cls(**kwargs)
