"""Messages for the person at the terminal (ablation/core/console.py): one line each, on stderr, never on stdout
(which carries tables and CSV)."""

from ablation.core.console import say


def test_say_writes_one_line_to_stderr_only(capsys):
    say("2/4 cells done")
    say("waiting for 1 running elsewhere")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == ["2/4 cells done", "waiting for 1 running elsewhere"]
