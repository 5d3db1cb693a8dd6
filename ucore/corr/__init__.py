"""The correlation engine: activations of K models -> sharded streaming moments -> tables.

  driver      `python main.py correlate`: prepare, plan the passes, per pass resume or start,
              accumulate, commit; finalize
  passes      the state in tiles run as successive passes where it does not fit the devices
  activations model / synthetic activation sources (one forward per model per batch)
  moments     numerically stable sharded co-moments (Chan merges) and the accumulate step
  precision   the accumulate GEMMs' dot precision names
  baselines   random mixing matrices for the rotation / gaussian-row baselines
  state       resumable accumulator state (tensorstore zarr3 shards + commit marker)
  finalize    co-moments -> per-neuron maxima / top-k / baselines, per device
  tables      the per-neuron tables (parquet), the all_pairs seed matrix, and their readers
  selfcheck   a float64 reference on sampled pairs; every run verifies itself
  memory, plan  does a step fit the device; per-device memory / FLOPs / time of a run
  export      optional zarr3 export of whole correlation blocks
  synthetic   a planted synthetic family (tests and dry runs)

May import: ucore.jobs, ucore.models, ucore.data.
"""
