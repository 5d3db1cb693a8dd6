"""Token datasets: text (HF datasets, hub or local files) -> token rows (tensorstore zarr3) + labels.

  build.build_store(config, workdir)   the recipe of the paper (§3), resumable
  store.open_store(path) -> TokenStore  readers: row ranges, per-process batch streams
  mask.token_mask(tokens, exclude_ids)  which tokens the correlation engine counts
  sources, batches, read_ahead          text sources; in-memory and store batches; prefetch

May import: ucore.jobs, ucore.models (a model's tokenizer).
"""
