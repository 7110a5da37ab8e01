"""Every option of every verb is checked while parsing, before any work, with one `sre2l: error:` line and exit 2.

The cases are generated from the parsers themselves: an option added without a `Check` fails
`test_every_option_has_a_check`, and each check's own bad examples are tried against its option.
"""
import argparse

import pytest

from sre2l.cli import Check, build_parser, main
from sre2l.core import Sre2lError


def verbs() -> dict:
    "{verb: its sub-parser}"
    return build_parser([])._subparsers._group_actions[0].choices


def valued(parser) -> list:
    "The actions of a parser that take a value (flags, --help and --version take none)."
    return [a for a in parser._actions if a.nargs != 0 and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


OPTIONS = [(verb, action.dest) for verb, parser in verbs().items() for action in valued(parser)]


def action_of(verb, dest):
    return next(a for a in valued(verbs()[verb]) if a.dest == dest)


def arguments(verb, tmp, bad_action=None, bad=None) -> list:
    "A command line of `verb`: good values for its positionals and required options, `bad` for `bad_action`."
    positionals, options = [], []
    for action in valued(verbs()[verb]):
        value = bad if action.dest == getattr(bad_action, "dest", None) else (
            action.type.good(tmp) if action.required or not action.option_strings else None)
        if value is None: continue
        if action.option_strings: options.append(f"{action.option_strings[0]}={value}")  # '-1' is no option
        else: positionals.append(value)
    return [verb, *positionals, *options]  # positionals first: an nargs='+' option would swallow them


@pytest.fixture
def scratch(tmp_path):
    (tmp_path / "a_file").write_text("x")
    return tmp_path


def test_the_options_are_found():
    assert len(OPTIONS) > 40 and ("reproduce", "cell_timeout") in OPTIONS and ("make-imagefolder", "workers") in OPTIONS


@pytest.mark.parametrize("verb, dest", OPTIONS)
def test_every_option_has_a_check(verb, dest):
    action = action_of(verb, dest)
    assert isinstance(action.type, Check), f"sre2l {verb}: {action.option_strings or dest} has no Check as its type"
    assert action.type.allowed and action.help


@pytest.mark.parametrize("verb, dest", OPTIONS)
def test_every_bad_value_is_refused_while_parsing_in_one_line(verb, dest, scratch, capsys):
    action = action_of(verb, dest)
    good = arguments(verb, scratch)
    assert isinstance(build_parser(good).parse_args(good), argparse.Namespace)  # the good values pass
    bads = action.type.bad(scratch)
    assert bads, f"{verb} {dest}: the check has no bad examples"
    name = action.option_strings[0] if action.option_strings else action.dest
    for bad in bads:
        argv = arguments(verb, scratch, action, bad)
        with pytest.raises(Sre2lError) as refused:  # while parsing: before any work
            build_parser(argv).parse_args(argv)
        assert name in str(refused.value) and action.type.allowed in str(refused.value), str(refused.value)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("sre2l: error:") and err.count("\n") == 1, err


def test_calibrate_writes_a_new_rates_file_that_a_dry_run_then_reads(tmp_path, monkeypatch, capsys):
    """`--calibrate --rates FILE` may name a file that does not exist yet (it writes it); without --calibrate the same
    missing file is refused before any work, saying how to make it."""
    import sre2l.plan
    new = tmp_path / "machine.json"
    assert main(["reproduce", "family_ci", "--dry-run", "--rates", str(new)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sre2l: error: argument --rates:") and "--calibrate" in err and err.count("\n") == 1, err
    monkeypatch.setattr(sre2l.plan, "calibrate", lambda **kw: sre2l.plan.H100)  # the measurement itself is not tested here
    assert main(["reproduce", "--calibrate", "--rates", str(new)]) == 0 and new.is_file()
    assert sre2l.plan.load_rates(str(new)) == sre2l.plan.H100
