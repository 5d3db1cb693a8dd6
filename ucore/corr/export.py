"""Optional export of every correlation block as chunked zarr3 (tensorstore).

<dir>/<x>__<y>/ holds float32 [L_x, d_mlp, B, d_mlp] (B = partner layers, or 3 in adjacent
mode: partner layer = layer + b - 1), NaN for dead neurons, chunked like the device shards.
Every process writes only the shards it owns; nothing N×N is gathered anywhere.
"""
import os

import jax
import numpy as np
import tensorstore as ts
from jax.experimental import multihost_utils

from ucore.jobs import atomic
from ucore.corr import finalize as F


def write_full(spec, mesh, state, out_dir, dead_rel_std):
  _, moms = F.moments_host(spec, state, dead_rel_std)
  for x, y in spec.pairs:
    rho = F.full_corr_blocks(spec, state, x, y, dead_rel_std, moms)
    shape = (spec.n_layers[x], spec.d_mlp, spec.band(x, y), spec.d_mlp)
    chunk = [min(a, b) for a, b in zip(rho.sharding.shard_shape(rho.shape), shape)]
    path = os.path.abspath(os.path.join(out_dir, f"{spec.names[x]}__{spec.names[y]}")) + "/"
    tspec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}
    if jax.process_index() == 0:
      ts.open(dict(tspec, metadata={
          "shape": list(shape), "data_type": "float32", "fill_value": float("nan"),
          "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}}}),
              create=True, delete_existing=True).result()
      atomic.write_json(os.path.join(path, "corr_layout.json"), {
          "axes": ["layer", "neuron", "partner_layer_slot", "partner_neuron"],
          "partner_layers": spec.partner_layer(x, y).tolist(),
          "layer_ids": [list(spec.layer_ids[x]), list(spec.layer_ids[y])]})
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"corr-export-{x}-{y}")
    t = ts.open(tspec).result()
    futs = []
    for sh in rho.addressable_shards:
      if sh.replica_id != 0:
        continue
      idx, src = [], []
      for sl, full in zip(sh.index, rho.shape):
        start = sl.start or 0
        stop = full if sl.stop is None else sl.stop
        idx.append((start, stop))
      data = np.asarray(sh.data)
      box = []
      for ax, (start, stop) in enumerate(idx):
        hi = min(stop, shape[ax])
        box.append(slice(start, hi))
        src.append(slice(0, max(hi - start, 0)))
      if any(b.stop <= b.start for b in box):
        continue
      futs.append(t[tuple(box)].write(data[tuple(src)]))
    for f in futs:
      f.result()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("corr-export-done")
