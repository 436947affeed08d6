"""What a user sees when a command fails: one line, an exit code, no traceback."""

from __future__ import annotations

import pytest

from keeper.errors import EXIT_INTERRUPTED, EXIT_USAGE, KeeperError, exit_code


def test_a_keeper_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> int:
        raise KeeperError("no node at http://127.0.0.1:8545:\n  connection refused")

    assert exit_code(fail) == EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err == "error: no node at http://127.0.0.1:8545: connection refused\n"


def test_ctrl_c_and_normal_returns(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> int:
        raise KeyboardInterrupt

    assert exit_code(interrupted) == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert exit_code(lambda: 3) == 3
    assert exit_code(lambda: None) == 0  # a main() that returns nothing succeeded


def test_other_errors_are_not_hidden() -> None:
    def bug() -> int:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback: it is ours to fix
        exit_code(bug)
