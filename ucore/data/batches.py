"""Token batches of the analyses: rows + dataset labels + the token mask (ucore.data.mask).

  make_batches(tokens, batch_rows)   in-memory rows (tests)
  store_batches(store, batch_rows)   a TokenStore's rows, masked with the store's own ids
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import numpy as np

from ucore.jobs.errors import UserError


@dataclasses.dataclass
class Batch:
  tokens: np.ndarray                  # int32 [B, P]
  row_labels: Optional[np.ndarray]    # int [B] (dataset label ids) or None
  mask: np.ndarray                    # bool [B, P]: token counted


def make_batches(tokens: np.ndarray, batch_rows: int, row_labels=None,
                 exclude_ids=None) -> list[Batch]:
  """In-memory rows -> Batches (tests and small runs); `exclude_ids` default: GPT-2's."""
  from ucore.data.mask import DEFAULT_EXCLUDE_IDS, token_mask
  exclude_ids = DEFAULT_EXCLUDE_IDS if exclude_ids is None else exclude_ids
  tokens = np.asarray(tokens, np.int32)
  if tokens.ndim != 2:
    raise UserError(f"tokens must be [rows, ctx]; got shape {tokens.shape}")
  out = []
  for a in range(0, tokens.shape[0], batch_rows):
    t = tokens[a:a + batch_rows]
    lab = None if row_labels is None else np.asarray(row_labels)[a:a + batch_rows]
    out.append(Batch(t, lab, token_mask(t, exclude_ids)))
  return out


def store_batches(store, batch_rows: int, max_rows: Optional[int] = None,
                  start_row: int = 0) -> Iterator[Batch]:
  """Batches of a TokenStore, with its own mask ids, over rows [start_row, start_row+max_rows)."""
  from ucore.data.mask import token_mask
  stop = store.num_rows if max_rows is None else min(store.num_rows, start_row + int(max_rows))
  for g, rows in store.iter_batches(batch_rows, start_row=start_row, stop_row=stop):
    if rows.shape[0] == 0:
      continue
    yield Batch(rows, store.row_labels(g, g + rows.shape[0]),
                token_mask(rows, store.mask_exclude_ids))
