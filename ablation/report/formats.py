"""The output formats of ``table`` and ``profile``, the default first. Declared apart from their renderers, with no
heavy import, so the command line builds its parser (and refuses a bad ``--format`` in one line) before pandas or
torch is imported."""

TABLE_FORMATS = ("md", "latex", "csv", "html")
PROFILE_FORMATS = ("table", "csv", "md")
