"""fw.console: everything the user sees goes through it; importing it costs no rich."""
from __future__ import annotations

import subprocess
import sys

from fw import console
from fw.console import ProgressBar


def test_importing_the_console_imports_no_rich():
    code = "import sys, fw.console; print('rich' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_messages_are_printed_to_stderr_and_recorded(capsys):
    console.clear()
    console.warn("dropped 2 rows [sic]")
    console.info("data: 8 training rows")
    assert capsys.readouterr().err == "warning: dropped 2 rows [sic]\ndata: 8 training rows\n"
    assert console.messages == ["dropped 2 rows [sic]", "data: 8 training rows"]
    assert console.warnings == ["dropped 2 rows [sic]"]
    console.clear()


def test_a_hidden_progress_bar_prints_nothing(capsys):
    with ProgressBar("generating", 3, show=False) as bar:
        bar.advance(2)
        bar.update(3, loss="0.1")
    assert capsys.readouterr() == ("", "")


def test_a_progress_bar_shows_its_count_and_status_fields_on_stderr(capsys):
    with ProgressBar("training", 4, status="loss {loss}  lr {lr}", completed=1) as bar:
        bar.update(3, loss="0.5000", lr="1e-04")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "training" in captured.err and "3/4" in captured.err and "loss 0.5000  lr 1e-04" in captured.err


def test_tables_and_success_lines_go_to_stdout(capsys):
    console.show(console.table("test statistics", ["output", "metric", "value"], [["answer", "loss", "1.2345"]],
                               right_aligned=2))
    console.success("3 predictions in out/")
    out = capsys.readouterr().out
    assert "test statistics" in out and "answer" in out and "1.2345" in out
    assert out.rstrip().endswith("✓ 3 predictions in out/")


# -- in a job of several processes --------------------------------------------------------------------------------
def as_rank(monkeypatch, rank: int, world: int = 2) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def test_only_the_main_process_of_a_job_prints(monkeypatch, capsys):
    console.clear()
    as_rank(monkeypatch, 1)
    console.warn("dropped 2 rows")
    console.info("data: 8 training rows")
    console.say("a line")
    console.success("3 predictions in out/")
    console.show(console.table("t", ["a"], [["1"]]))
    with ProgressBar("generating", 3) as bar:
        bar.advance(3)
    assert capsys.readouterr() == ("", "")
    assert console.messages == ["dropped 2 rows", "data: 8 training rows"]  # still recorded
    as_rank(monkeypatch, 0)
    console.info("data: 8 training rows")
    console.success("3 predictions in out/")
    assert capsys.readouterr() == ("✓ 3 predictions in out/\n", "data: 8 training rows\n")
    console.clear()


def test_a_failing_process_says_why_with_its_rank_in_a_job(monkeypatch, capsys):
    console.error("no data given: pass --dataset.")
    assert capsys.readouterr().err == "error: no data given: pass --dataset.\n"
    as_rank(monkeypatch, 3, world=4)
    console.error("no data given: pass --dataset.")
    assert capsys.readouterr().err == "[rank 3] error: no data given: pass --dataset.\n"
