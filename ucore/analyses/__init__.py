"""The paper's neuron analyses (§5–§8), each a library function on plain arrays/model objects
on plain arrays / model objects, writing parquet + PNGs.

  moments     exact streaming moments (Chan/Pébay merge, float64): mean, var, skew, kurt
  stats       per-neuron activation + weight statistics, within-layer percentiles (Fig. 3/9/14)
  vocab       vocabulary predicates from any byte-level BPE vocabulary (label matrix)
  families    variance reduction for every neuron × label in one pass; position MI; families
  prediction  prediction / suppression / partition neurons from vocab moments (Fig. 6)
  entropy     entropy-neuron candidates; fixed-activation sweep (Fig. 7)
  attention   attention (de)activation scores and query-only path ablation (Fig. 8)
  ablation    zero / mean / fixed ablation of neuron sets, loss and KL vs the clean run
  properties, roles, focus, top_examples, common, canvas   shared pieces of the above
  persistence universality over training: persistence_table, excess_by_step

Every module's run returns a list of (title, png_path, caption) for the report (stats.run
also its table). Their runner (model dir + token store + corr table -> <workdir>/<analysis>/)
is ucore.analyze.

May import: ucore.jobs, ucore.models, ucore.data, ucore.corr (tables).
"""
