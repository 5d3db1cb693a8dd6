"""GPT-NeoX (Pythia) model configuration: the fields of HF `GPTNeoXConfig` that change the
computation, read from legacy (transformers 4: `rotary_pct`, `rotary_emb_base`,
`rope_scaling`) and current (transformers 5: `rope_parameters`) config.json files alike.
Fields that change the forward pass and are not honoured are refused, never ignored.
"""
import dataclasses

from ucore.jobs.errors import UserError
from ucore.models.config import LMConfig, read_hf_fields

# NeoX-only fields that do not change inference activations.
_IGNORED_HF_FIELDS = frozenset("""
attention_dropout hidden_dropout classifier_dropout attention_probs_dropout_prob
hidden_dropout_prob
""".split())
_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "vocab_size")

# HF GPTNeoXConfig key -> our field, copied as is (read by from_hf_dict, inverted by the HF
# export, converters/export_hf.py); the rotary fields have several spellings (_rotary_fields).
HF_FIELDS = {
    "num_hidden_layers": "n_layer", "hidden_size": "n_embd",
    "num_attention_heads": "n_head", "intermediate_size": "d_mlp",
    "max_position_embeddings": "n_positions", "vocab_size": "vocab_size",
    "hidden_act": "activation_function", "layer_norm_eps": "layer_norm_epsilon",
    "tie_word_embeddings": "tie_word_embeddings",
    "use_parallel_residual": "parallel_residual", "attention_bias": "attention_bias",
}


@dataclasses.dataclass(frozen=True)
class NeoXConfig(LMConfig):
  """Defaults: EleutherAI/pythia-160m."""
  ARCHITECTURE = "gpt_neox"
  MODEL_TYPES = ("gpt_neox",)

  n_positions: int = 2048
  vocab_size: int = 50304
  activation_function: str = "gelu"
  tie_word_embeddings: bool = False
  rotary_pct: float = 0.25           # share of each head's dims that rotary rotates
  rotary_base: float = 10000.0       # rope_theta
  parallel_residual: bool = True     # x + attn(ln1(x)) + mlp(ln2(x))
  attention_bias: bool = True        # biases of query_key_value and dense

  # What GPT-NeoX fixes (see ucore.models.config).
  positional = "rotary"
  scale_attn_weights = True
  scale_attn_by_inverse_layer_idx = False
  reorder_and_upcast_attn = False

  def __post_init__(self):
    super().__post_init__()
    if not 0.0 <= self.rotary_pct <= 1.0:
      raise UserError(f"rotary_pct={self.rotary_pct!r} must lie in [0, 1]")
    if self.rotary_dim % 2:
      raise UserError(f"rotary dims int(d_head * rotary_pct) = {self.rotary_dim} is odd; "
                      "rotary needs pairs of dims")
    if not self.rotary_base > 0:
      raise UserError(f"rotary_base={self.rotary_base!r} must be > 0")

  @property
  def rotary_dim(self) -> int:
    return int(self.d_head * self.rotary_pct)

  @classmethod
  def from_hf_dict(cls, hf: dict) -> "NeoXConfig":
    if hf.get("model_type") not in cls.MODEL_TYPES:
      raise UserError(f"config.json has model_type={hf.get('model_type')!r}, not gpt_neox")
    missing = [k for k in _REQUIRED if k not in hf]
    if missing:
      raise UserError(f"config.json lacks {', '.join(missing)}; not a complete GPT-NeoX config")
    rope_keys = ("rotary_pct", "rotary_emb_base", "rope_parameters", "rope_scaling",
                 "rope_theta", "partial_rotary_factor", "head_dim")
    kwargs = read_hf_fields(hf, HF_FIELDS, handled=rope_keys, ignored=_IGNORED_HF_FIELDS,
                            name="GPT-NeoX")
    kwargs.update(_rotary_fields(hf))
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * hf["num_attention_heads"] != hf["hidden_size"]:
      raise UserError(f"config.json sets head_dim={head_dim} != hidden_size / "
                      "num_attention_heads; this toolkit cannot honour it")
    return cls(**kwargs)


def _rotary_fields(hf: dict) -> dict:
  """rotary_pct / rotary_base from whichever spelling the file uses; disagreeing spellings and
  any RoPE variant other than the default (scaling, YaRN, ...) are refused."""
  rope = hf.get("rope_parameters") or {}
  if not isinstance(rope, dict):
    raise UserError(f"config.json rope_parameters={rope!r} is not an object")
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise UserError(f"config.json sets rope_type={rope_type!r}; only the default RoPE is "
                    "supported")
  extra = sorted(set(rope) - {"rope_type", "type", "rope_theta", "partial_rotary_factor"})
  if extra:
    raise UserError(f"config.json rope_parameters set {extra}, which this toolkit cannot honour")
  if hf.get("rope_scaling") not in (None, {}):
    raise UserError(f"config.json sets rope_scaling={hf['rope_scaling']!r}, which this toolkit "
                    "cannot honour")
  out = {}
  for ours, spellings in (("rotary_pct", ("rotary_pct", "partial_rotary_factor")),
                          ("rotary_base", ("rotary_emb_base", "rope_theta"))):
    values = {}
    for k in spellings:
      if rope.get(k) is not None:
        values[f"rope_parameters.{k}"] = rope[k]
      if hf.get(k) is not None:
        values[k] = hf[k]
    if len(set(map(float, values.values()))) > 1:
      raise UserError(f"config.json gives {ours} twice with different values: {values}")
    if values:
      out[ours] = float(next(iter(values.values())))
  return out
