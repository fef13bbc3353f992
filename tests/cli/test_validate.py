"""`whybox validate` runs end to end on small sizes and rejects bad options with exit code 2."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "whybox", *args], capture_output=True, text=True, timeout=600)


def test_validate_prints_the_table():
    out = run("validate", "--tests", "1", "--top-k", "4", "--random-k", "0", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "Pearson" in out.stdout and "top 4" in out.stdout


def test_validate_bad_model_is_one_line_exit_2():
    out = run("validate", "--model", "cnn")
    assert out.returncode == 2
    assert out.stderr.strip() == "whybox: error: unknown model 'cnn'; choose lr or mlp"


def test_validate_shows_one_overall_bar_and_still_prints_the_table():
    out = run("validate", "--tests", "2", "--top-k", "3", "--random-k", "0")
    assert out.returncode == 0, out.stderr
    assert "Pearson" in out.stdout and "top 3" in out.stdout
    assert "whybox validate" in out.stderr and "4/4" in out.stderr      # train, fit, one step per test point


def test_an_error_inside_a_bar_is_printed_on_its_own_line(tmp_path, capsys, monkeypatch):
    """`mismatch` fails inside its progress bar (test index out of range): the bar is closed first, so
    the error line starts at the beginning of a line instead of trailing the bar."""
    import re

    from whybox.cli import main

    monkeypatch.setattr(sys, "argv", ["whybox", "mismatch", "--n-train", "3000", "--n-test", "600",
                                      "--n-children-test", "30", "--test-index", "100000", "--out", str(tmp_path)])
    try:
        main()
    except SystemExit as e:
        assert e.code == 2
    err = capsys.readouterr().err
    assert "whybox mismatch" in err                                      # the bar was drawn
    segments = re.split(r"[\r\n]", err)
    assert err.endswith("\n") and segments[-1] == ""
    assert re.fullmatch(r"whybox: error: test_index must be in \[0, \d+\), got 100000", segments[-2]), err
    assert "whybox mismatch" not in err.rsplit("\r", 1)[-1]                # nothing of the bar after its last clear
