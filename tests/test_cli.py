"""The installed command as users meet it: one real process per command with bad input.
Every other bad-input case runs in-process through the same entry (conftest.cli_error);
these keep the process boundary honest (exit status 2, one stderr line, no traceback)."""

from __future__ import annotations

import pytest

from mnist_dist.cli import COMMANDS

from .conftest import REPO, assert_one_line_error, run_cli

# command -> (argv, fragment of its one error line); predict, evaluate and export have
# theirs in test_recognizer.py, next to their other cases
PROCESS_CASES = {
    "train": (["train", "--lr", "-1", "--out", "/nonexistent/r"], "--lr must be positive"),
    "models": (["models", "--nope"], "unrecognized arguments: --nope"),
    "sweep": (["sweep", "nope.toml", "--dry-run"], "nope.toml"),
    "status": (["status", "/nonexistent/sweep"], "/nonexistent/sweep"),
    "report": (["report", "/nonexistent/sweep"], "no such folder"),
    "bench": (["bench", "--table", "/nonexistent.json"], "nonexistent.json"),
    "tune": (["tune", "nope_tune.toml", "--cluster", "local"], "nope_tune.toml"),
}


@pytest.mark.parametrize("command", sorted(PROCESS_CASES))
def test_each_command_reports_bad_input_in_one_line_as_a_process(command):
    argv, fragment = PROCESS_CASES[command]
    proc = run_cli(*argv, cwd=REPO)
    assert_one_line_error(proc, fragment)
    assert proc.returncode == 2 and not proc.stdout


def test_every_command_has_a_process_case_here_or_in_the_recognizer_tests():
    assert set(COMMANDS) == set(PROCESS_CASES) | {"predict", "evaluate", "export"}


def test_an_unknown_command_is_one_line():
    assert_one_line_error(run_cli("trian"), "unknown command 'trian'", "train")
