"""The one exception type for bad user input (files, labels, config keys).

`main.py` prints it as a single `error: ...` line and exits non-zero, so every
message must name the offending file or config key.
"""


class UserInputError(ValueError):
  """Bad input from the user: a file, a label or a config value."""
