"""How a job survives a kill: the lowest layer, imported by every other package.

  errors        UserError (one `error:` line, exit 2) and environment errors (disk full, ...)
  atomic        atomic writes (temp file + rename), JSON/sha256 helpers, completion markers
  identity      "is this the same job?": normalize / diff / claim, workdir-relative paths
  workdir_lock  one run per workdir (an exclusive lock the kernel drops when a process dies)
  config_files  load a configs/*.py file by name, with its `:variant`
  schema        every config family's fields (type, range, choices, cross-field rules), checked
                before anything is written

May import: nothing else in ucore.
"""
