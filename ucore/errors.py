"""The one exception type that means "the user's input is wrong".

main.py turns a UserError into a one-line message on stderr and exit code 2; every other
exception is a bug and keeps its traceback.
"""


class UserError(Exception):
  """Bad input from outside (files, flags, configs, resumed state). Message: one line,
  saying what is wrong and what to do."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))
