"""Vocabulary predicates from any byte-level BPE vocabulary (vocab.json) — the token labels of
the families analysis (paper §4.3).

`decode_vocab(path)` gives each id's text; `vocab_labels(texts, unigram_counts=...)` gives a
LabelSet: a bool matrix [vocab, labels] with one name and one kind per label. Kinds:
  token     generic predicates (capitalisation, digits, years, leading space, punctuation,
            suffixes, pronoun and function-word classes, months, weekdays, length)
  alphabet  is_letter_<x> (the token is the single letter x, any case, with or without a
            leading space) and starts_with_letter_<x>
  unigram   unigram:<w> — the token normalizes (strip leading space, lowercase) to the
            frequent word w; one label per frequent normalized token
No part-of-speech or dependency labels (they need spaCy, which is not installed).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import string

import numpy as np

from ucore.jobs.errors import UserError


def _bytes_to_unicode():
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
        list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, (chr(c) for c in cs)))


_BYTE_DECODER = {v: k for k, v in _bytes_to_unicode().items()}


def decode_token(symbol: str) -> str:
  """A byte-level BPE symbol (e.g. 'Ġdog') -> its text (' dog'); invalid UTF-8 -> U+FFFD."""
  if all(ch in _BYTE_DECODER for ch in symbol):
    return bytes(_BYTE_DECODER[ch] for ch in symbol).decode("utf-8", errors="replace")
  return symbol    # special tokens such as <|endoftext|>


def decode_vocab(vocab_json: str, vocab_size: int | None = None) -> list[str]:
  """Texts indexed by id (ids missing from the file -> '')."""
  try:
    with open(vocab_json, "r", encoding="utf-8") as f:
      vocab = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read vocabulary {vocab_json}: {e}") from e
  if not isinstance(vocab, dict) or not vocab:
    raise UserError(f"{vocab_json} is not a byte-level BPE vocab.json (token -> id)")
  size = max(vocab.values()) + 1 if vocab_size is None else int(vocab_size)
  if max(vocab.values()) >= size:
    raise UserError(f"vocabulary {vocab_json} has ids up to {max(vocab.values())} but the model "
                    f"has {size} token ids; use the model's tokenizer")
  texts = [""] * size
  for sym, i in vocab.items():
    texts[i] = decode_token(sym)
  return texts


def normalize(text: str) -> str:
  return text.strip().lower()


@dataclasses.dataclass
class LabelSet:
  names: list            # label names
  kinds: list            # one kind per label
  matrix: np.ndarray     # bool [vocab, labels]

  def __post_init__(self):
    if self.matrix.shape[1] != len(self.names) or len(self.names) != len(self.kinds):
      raise ValueError("LabelSet: names/kinds/matrix disagree")


# ---- predicate tables ------------------------------------------------------------------------
_WORD_CLASSES = {
    "pronoun_1st_singular": "i me my mine myself",
    "pronoun_1st_plural": "we us our ours ourselves",
    "pronoun_2nd": "you your yours yourself yourselves",
    "pronoun_3rd_masculine": "he him his himself",
    "pronoun_3rd_feminine": "she her hers herself",
    "pronoun_3rd_neuter": "it its itself",
    "pronoun_3rd_plural": "they them their theirs themselves",
    "pronoun_relative": "who whom whose which what that where when why how",
    "demonstrative": "this that these those",
    "article": "a an the",
    "conjunction": "and or but nor yet so",
    "preposition": ("of in on at by for with from to into onto over under about after before "
                    "between through during without within against among across upon"),
    "auxiliary_be": "is are was were be been being am",
    "auxiliary_have": "have has had having",
    "modal": "can could will would shall should may might must",
    "negation": "not no never n't none nothing",
    "month": ("january february march april may june july august september october november "
              "december jan feb mar apr jun jul aug sep sept oct nov dec"),
    "weekday": "monday tuesday wednesday thursday friday saturday sunday",
    "number_word": ("one two three four five six seven eight nine ten eleven twelve twenty "
                    "thirty forty fifty hundred thousand million billion"),
    "ordinal_word": "first second third fourth fifth sixth seventh eighth ninth tenth last next",
    "code_keyword": ("def class return import if else elif for while try except lambda self "
                     "true false none null void int static public private const var let"),
}
_SUFFIXES = ("ing", "ed", "ly", "tion", "sion", "s", "es", "er", "est", "ment", "ness", "able",
             "ible", "al", "ful", "less", "ous", "ive", "ize", "ise", "ity", "ism", "ist", "ic",
             "y", "en", "ship", "ward")
_PREFIXES = ("un", "re", "in", "dis", "pre", "non", "over", "sub")
_PUNCT = {
    "open_paren": "(", "close_paren": ")", "open_bracket": "[", "close_bracket": "]",
    "open_brace": "{", "close_brace": "}", "double_quote": '"', "apostrophe": "'",
    "comma": ",", "period": ".", "colon": ":", "semicolon": ";", "hyphen": "-",
    "exclamation": "!", "question": "?", "slash": "/", "backslash": "\\", "underscore": "_",
    "equals": "=", "plus": "+", "asterisk": "*", "hash": "#", "at_sign": "@", "ampersand": "&",
    "percent": "%", "dollar": "$", "pipe": "|", "less_than": "<", "greater_than": ">",
    "tilde": "~", "backtick": "`", "caret": "^",
}
_PUNCT_CHARS = set(string.punctuation) | set("“”‘’—–…«»")


def _generic_predicates(t: str) -> dict:
  s = t.strip()
  low = s.lower()
  letters = [c for c in s if c.isalpha()]
  out = {
      "starts_with_space": t[:1] == " ",
      "starts_with_newline": t[:1] == "\n",
      "contains_newline": "\n" in t,
      "is_whitespace": len(t) > 0 and t.isspace(),
      "starts_with_capital": s[:1].isupper(),
      "is_all_caps": len(letters) >= 2 and all(c.isupper() for c in letters),
      "is_lowercase_word": s.isalpha() and s.islower(),
      "is_capitalized_word": s.isalpha() and s[:1].isupper() and s[1:].islower(),
      "is_alpha": s.isalpha(),
      "is_ascii": s.isascii(),
      "is_non_ascii": bool(s) and not s.isascii(),
      "contains_digit": any(c.isdigit() for c in s),
      "is_number": bool(s) and s.isdigit(),
      "is_single_digit": len(s) == 1 and s.isdigit(),
      "is_two_digits": len(s) == 2 and s.isdigit(),
      "is_year": len(s) == 4 and s.isdigit() and 1000 <= int(s) <= 2099,
      "is_punctuation": bool(s) and all(c in _PUNCT_CHARS for c in s),
      "contains_punctuation": any(c in _PUNCT_CHARS for c in s),
      "is_single_char": len(s) == 1,
      "is_short_token": 2 <= len(s) <= 3,
      "is_long_token": len(s) >= 8,
      "is_word_start": t[:1] == " " and s[:1].isalpha(),
      "is_word_piece": t[:1] != " " and s.isalpha() and s[:1].islower(),
      "is_unicode_fragment": "\ufffd" in t,
  }
  for name, ch in _PUNCT.items():
    out[f"punct_{name}"] = ch in s and all(c in _PUNCT_CHARS or c.isspace() for c in s)
  for name, words in _WORD_CLASSES.items():
    out[name] = low in words.split()
  for suf in _SUFFIXES:
    out[f"ends_with_{suf}"] = s.isalpha() and len(s) > len(suf) + 1 and low.endswith(suf)
  for pre in _PREFIXES:
    out[f"starts_with_{pre}"] = (s.isalpha() and len(s) > len(pre) + 2 and
                                 low.startswith(pre))
  return out


def vocab_labels(texts: list, unigram_counts: np.ndarray | None = None,
                 n_unigrams: int = 200, min_unigram_count: int = 1) -> LabelSet:
  """The label matrix over a decoded vocabulary. `unigram_counts[id]`: token frequencies in the
  data; the `n_unigrams` most frequent normalized tokens become unigram labels."""
  V = len(texts)
  names, kinds, base, norm = _token_and_alphabet_labels(tuple(texts))
  names, kinds, cols = list(names), list(kinds), [base]
  if unigram_counts is not None:
    counts = np.asarray(unigram_counts, np.int64)
    if counts.shape[0] > V:
      raise UserError(f"token counts cover {counts.shape[0]} ids but the vocabulary has {V}")
    by_norm: dict = {}
    for i in np.nonzero(counts)[0]:
      w = norm[i]
      if w and re.search(r"\w", w):
        by_norm[w] = by_norm.get(w, 0) + int(counts[i])
    top = sorted((w for w in by_norm if by_norm[w] >= min_unigram_count),
                 key=lambda w: (-by_norm[w], w))[:n_unigrams]
    index = {w: j for j, w in enumerate(top)}
    mat = np.zeros((V, len(top)), bool)
    for i, w in enumerate(norm):
      j = index.get(w)
      if j is not None:
        mat[i, j] = True
    names += [f"unigram:{w}" for w in top]
    kinds += ["unigram"] * len(top)
    cols.append(mat)
  return LabelSet(names, kinds, np.concatenate(cols, axis=1))


@functools.lru_cache(maxsize=2)
def _token_and_alphabet_labels(texts: tuple) -> tuple:
  """(names, kinds, bool matrix [vocab, labels], normalized texts) of the labels that depend on
  the vocabulary alone: the same for every model of one tokenizer and every data set, so built
  once per process (seconds of Python for GPT-2's 50257 tokens). The matrix is read-only."""
  generic = [_generic_predicates(t) for t in texts]
  names = list(generic[0].keys())
  cols = [np.array([g[k] for g in generic], bool) for k in names]
  kinds = ["token"] * len(names)
  norm = [normalize(t) for t in texts]
  for letter in string.ascii_lowercase:
    names.append(f"is_letter_{letter}")
    cols.append(np.array([n == letter for n in norm], bool))
    kinds.append("alphabet")
  for letter in string.ascii_lowercase:
    names.append(f"starts_with_letter_{letter}")
    cols.append(np.array([n[:1] == letter and n.isalpha() for n in norm], bool))
    kinds.append("alphabet")
  matrix = np.stack(cols, axis=1)
  matrix.flags.writeable = False
  return tuple(names), tuple(kinds), matrix, tuple(norm)
