"""The token mask of the paper (§3): padding, BOS/EOS and the newline token are not counted.

One function, shared by the correlation engine and the analyses, so "which tokens count" is
decided in exactly one place. The ids are configurable: a token store records the ids of its
own tokenizer (`recommended_exclude_ids` when it is built, `exclude_ids_for(manifest)` when it
is read, `TokenStore.mask_exclude_ids`); readers take them from the store, never from a
fallback. GPT-2's ids live here and nowhere else: `DEFAULT_EXCLUDE_IDS` is the default of
`token_mask` for in-memory GPT-2 token arrays (tests, synthetic tokens).
"""
import numpy as np

GPT2_EOS_ID = 50256          # <|endoftext|>: BOS = EOS in GPT-2
GPT2_NEWLINE_ID = 198        # "\n"
# GPT-2: <|endoftext|> (= BOS = EOS) and "\n". Padding has no id in GPT-2; pass pad_id.
DEFAULT_EXCLUDE_IDS = (GPT2_EOS_ID, GPT2_NEWLINE_ID)


def token_mask(tokens, exclude_ids=DEFAULT_EXCLUDE_IDS, pad_id=None):
  """True where a token is counted: not one of `exclude_ids` and not `pad_id`.

  `tokens`: integer array of any shape, numpy or jax.numpy (works under jit: the ids are
  Python ints, the comparison is elementwise). Returns a bool array of the same shape and the
  same array library as `tokens`. No position-based exclusion (as in the paper).
  """
  ids = tuple(int(i) for i in exclude_ids)
  if pad_id is not None:
    ids = ids + (int(pad_id),)
  if isinstance(tokens, np.ndarray) or np.isscalar(tokens):
    xp = np
  else:
    import jax.numpy as xp
  mask = xp.ones(xp.shape(tokens), dtype=bool)
  for i in ids:
    mask = mask & (tokens != i)
  return mask


def recommended_exclude_ids(bos_id: int, eos_id: int, newline_id=None) -> list:
  """The ids a new token store records for its tokenizer: BOS, EOS and the newline token
  (when the tokenizer encodes "\n" as one token), sorted, without repeats."""
  ids = {int(bos_id), int(eos_id)} | ({int(newline_id)} if newline_id is not None else set())
  return sorted(ids)


def exclude_ids_for(manifest: dict) -> tuple:
  """The mask ids a token store recommends for its tokenizer (BOS/EOS and newline)."""
  return tuple(int(i) for i in manifest["mask_exclude_ids"])
