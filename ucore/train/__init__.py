"""Seed-family training of small GPT-2s (the toolkit's own "Mistral" family).

  from ucore.train import train_family
  summary = train_family(config, workdir, rows)   # rows: int32 [num_rows, ctx] or a TokenStore

See ucore/train/loop.py for the workdir layout and ucore/train/core.py for the vmapped step.

May import: ucore.jobs, ucore.models, ucore.data.
"""
from ucore.train.core import (batch_row_indices, family_batch, gpt2_init, lr_schedule,
                              make_family_eval, make_family_step, make_optimizer,
                              make_single_step, stack_params, unstack)
from ucore.train.loop import (checkpoint_steps, model_config, read_family, read_losses,
                              train_family)

__all__ = ["batch_row_indices", "checkpoint_steps", "family_batch", "gpt2_init",
           "lr_schedule", "make_family_eval", "make_family_step", "make_optimizer",
           "make_single_step", "model_config", "read_family", "read_losses", "stack_params",
           "train_family", "unstack"]
