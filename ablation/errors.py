"""The one exception type users see for bad input.

Every check that rejects an experiment raises ``ConfigError`` with a single line that names the dotted key,
the bad value and what is allowed, so the command line can print it and stop before any job starts.
"""


class ConfigError(ValueError):
    """A configuration value is not allowed; the message is one line: key, bad value, what is allowed."""

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}: {value!r} is not allowed; {allowed}")
