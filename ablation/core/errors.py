"""The exception types users see for bad input or unusable stores.

Every check that rejects an experiment raises ``ConfigError`` with a single line that names the dotted key,
the bad value and what is allowed, so the command line can print it and stop before any job starts.
``UsageError`` is the same promise for a command-line flag (or the Python API's argument that stands for it).
``StoreError`` is the same promise for a tracking store, sweep storage or checkpoint folder that cannot be used
(unreachable, read-only, refusing a write): one line naming the URI and the cause, raised before anything is
created in it.
"""

# An ``allowed`` text that starts like this says what is wrong with the value: it follows the value directly.
_PREDICATES = ("is ", "has ", "holds ", "exceeds ", "does ", "cannot ", "takes ", "never ", "returned ")


class ConfigError(ValueError):
    """A configuration value is not allowed; the message is one line: key, bad value, what is allowed."""

    def __init__(self, key: str, value: object, allowed: str, *, sentence: str | None = None):
        self.key, self.value, self.allowed = key, value, allowed
        # ``sentence`` replaces "<value> is not allowed; <allowed>" where no single value is at fault (a file that
        # is empty or not YAML): "bad.yaml: the file is empty; an experiment needs at least a 'base' mapping".
        if sentence is None and allowed.startswith(_PREDICATES):
            sentence = f"{value!r} {allowed}"  # "'.' is a folder; ..." rather than "is not allowed; is a folder"
        super().__init__(f"{key}: {sentence}" if sentence else f"{key}: {value!r} is not allowed; {allowed}")


class StoreError(RuntimeError):
    """A store cannot be used; the message is one line: which option, which URI, and why."""

    def __init__(self, option: str, uri: str, cause: str):
        self.option, self.uri, self.cause = option, uri, cause
        cause = " ".join(cause.split())  # whatever a driver said, on one line
        super().__init__(f"{option} {uri}: {cause}")


class UsageError(ValueError):
    """A flag of the command line (or the API argument behind it) is not allowed; one line: flag, value, what is
    allowed. The command line prints it and exits with code 2; the Python API raises it."""
