"""The command line's front door: plain help text, real defaults, the experiment contract."""

import importlib
import re

import pytest
from smcdiff_experiments import DEFAULT, EXPERIMENTS

from smcdiff.cli import build_parser, main, resolve_progress, written_since

RST = re.compile(r"``|:(?:class|func|meth|mod|math):`")


def show_help(argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0


@pytest.mark.parametrize("argv", [[], ["run"], ["list"]])
def test_help_is_plain_text_with_real_defaults(argv, capsys):
    show_help(argv)
    out = capsys.readouterr().out
    assert not RST.search(out), out
    assert "(default: None)" not in out
    assert "%(" not in out


def test_run_help_shows_defaults(capsys):
    show_help([])
    assert f"(default: {DEFAULT})" in capsys.readouterr().out
    show_help(["run"])
    out = capsys.readouterr().out
    assert "(default: results)" in out and "(default: cpu)" in out


def test_list_mentions_no_issue_numbers(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert not re.search(r"\bissues?\b|#\d", out, re.IGNORECASE), out
    assert all(name in out for name in EXPERIMENTS)


def test_no_progress_maps_to_false_and_default_is_auto():
    parser = build_parser()
    assert parser.parse_args(["run"]).progress is None
    assert parser.parse_args(["run", "--no-progress"]).progress is False
    assert resolve_progress(False) is False
    assert resolve_progress(True) is True
    assert isinstance(resolve_progress(None), bool)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_has_the_cli_contract(name):
    mod = importlib.import_module(EXPERIMENTS[name])
    assert isinstance(mod.DESCRIPTION, str) and "\n" not in mod.DESCRIPTION
    assert callable(mod.run) and callable(mod.format_table)


def test_written_since_names_fresh_entries(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_text("x")
    (tmp_path / "results.json").write_text("[]")
    assert written_since(tmp_path, 0.0) == ["figures/", "results.json"]
    assert written_since(tmp_path, 4e9) == []
    assert written_since(tmp_path / "missing", 0.0) == []
