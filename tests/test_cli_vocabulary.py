"""One vocabulary across the commands, read off the parser itself: every option has help, a device
option is `auto` by default everywhere with the same words, the options that name the same thing
have the same name, fixed choices are choices (refused at once, listed in --help), --version."""

from typing import Literal, get_args, get_origin

import typer
from typer.testing import CliRunner

import avhgr
from avhgr.cli import DEVICE_HELP, app

ROOT = typer.main.get_command(app)
COMMANDS = {name: ROOT.get_command(None, name) for name in ROOT.list_commands(None)}


def options(command):
    return [p for p in command.params if p.param_type_name == "option" and p.name != "help" and not p.hidden]


def is_choice(p) -> bool:
    annotation = p.type_descriptor.annotation
    inner = [a for a in get_args(annotation) if a is not type(None)] if get_origin(annotation) is not Literal else [annotation]
    return any(get_origin(a) is Literal for a in inner)


def test_every_option_of_every_command_says_what_it_is():
    missing = [f"{name} {p.opts[0]}" for name, c in COMMANDS.items() for p in options(c) if not (p.help or "").strip()]
    assert not missing, missing
    assert set(COMMANDS) >= {"preprocess", "inspect", "train", "evaluate", "predict", "watch", "study", "serve"}


def test_device_is_auto_everywhere_with_the_same_words():
    devices = {name: p for name, c in COMMANDS.items() for p in options(c) if p.name == "device"}
    assert set(devices) >= {"preprocess", "train", "evaluate", "predict", "watch", "study", "serve"}
    for name, p in devices.items():
        assert p.default == "auto" and p.help.endswith(DEVICE_HELP), name


def test_the_same_thing_has_the_same_name_in_every_command():
    names = {name: {o for p in options(c) for o in p.opts} for name, c in COMMANDS.items()}
    for option, where in {"--lam": ("train", "study"), "--fusion-layers": ("train", "study"), "--labeled-fraction": ("train", "study"),
                          "--rate": ("evaluate", "study"), "--cache": ("train", "study", "inspect", "evaluate"),
                          "--model": ("evaluate", "predict", "watch", "serve")}.items():  # fmt: skip
        for command in where:
            assert option in names[command], f"{command} has no {option}"
    # The old spellings are second names of the same option, never an option of their own.
    for name, c in COMMANDS.items():
        for p in options(c):
            assert not any(o in ("--lams", "--layers", "--rates", "--fractions") for o in p.opts[:1]), f"{name} {p.opts}"


def test_fixed_choices_are_choices():
    expected = {"train": {"corr", "split", "backbone", "recipe", "level", "modalities", "schedule", "feature_norm"},
                "evaluate": {"missing"}, "preprocess": {"dataset"}, "study": {"split", "recipe", "backbone"}}  # fmt: skip
    for command, wanted in expected.items():
        choices = {p.name for p in options(COMMANDS[command]) if is_choice(p)}
        assert wanted <= choices, f"{command}: {sorted(wanted - choices)} shown as free text"
    refused = CliRunner().invoke(app, ["train", "--cache", "c", "--out", "r", "--modalities", "face"])
    assert refused.exit_code == 2 and "audio,visual" in refused.output


def test_a_list_option_that_is_not_a_list_of_numbers_is_refused_in_one_line():
    res = CliRunner().invoke(app, ["study", "missing", "--cache", "c", "--out", "o", "--rate", "0.5,half"])
    assert res.exit_code == 2 and "--rate" in res.output and "Traceback" not in res.output


def test_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and avhgr.__version__ in res.output
