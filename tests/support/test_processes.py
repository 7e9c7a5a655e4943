"""tests/support/processes.py: a forked run's exit code survives the forkserver losing it (python/cpython#140867)."""

from types import SimpleNamespace

from tests.support import processes


def test_a_lost_exit_status_is_recovered_from_the_childs_record(tmp_path):
    log = tmp_path / "log.txt"
    done = processes.run(["no-such-command"], tmp_path, log)
    assert done.exitcode == 2 and "not allowed" in done.log  # argparse's exit code, through the forkserver
    assert (tmp_path / "log.txt.exit").read_text() == "2"
    # The same child, had the forkserver's report been lost (popen_forkserver then says 255):
    assert processes.finished(SimpleNamespace(exitcode=255), log).exitcode == 2
    # A child that never returned (SIGKILLed) leaves no record: the status reads as lost, not as a code.
    (tmp_path / "log.txt.exit").unlink()
    lost = processes.finished(SimpleNamespace(exitcode=255), log)
    assert lost.lost and processes.was_killed(lost)
    assert not processes.was_killed(done)
