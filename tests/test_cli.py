"""The console entry point and `python -m stackalign` both work."""

import subprocess
import sys

from stackalign.cli import main


def test_python_dash_m_version():
    out = subprocess.run(
        [sys.executable, "-m", "stackalign", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "0.1.0"


def test_games_toy_prints_paper_numbers(capsys):
    assert main(["games", "toy"]) == 0
    out = capsys.readouterr().out
    for number in ("1.2320", "1.4509", "1.6906"):
        assert number in out


def test_bad_subcommand_exits_nonzero():
    proc = subprocess.run([sys.executable, "-m", "stackalign", "nonsense"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "invalid choice" in proc.stderr
