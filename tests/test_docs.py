"""The README and docs as a user reads them: every `avhgr` command in a shell block parses with
today's CLI (a renamed option, a removed command or a choice that no longer exists fails here),
every script they name exists, every link to a file resolves, the README stays short, and the
README's Python example runs as written on a generated clip."""

import re
import shlex
from pathlib import Path

import pytest
import typer

from avhgr.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(page: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", page.read_text(), re.S)


def shell_lines(page: Path) -> list[str]:
    lines = []
    for block in blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s#", line)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


class Refused(Exception):
    pass


def parse(command, args: list[str]) -> None:
    """What the shell would hand to avhgr, parsed and checked (options, choices, types) without
    running: Refused with the parser's message where avhgr would refuse it."""
    while hasattr(command, "list_commands"):  # a group (Typer carries its own click: no isinstance)
        name, args = args[0], args[1:]
        sub = command.get_command(command.make_context(command.name, [name], resilient_parsing=True), name)
        if sub is None:
            raise Refused(f"no command {name!r}")
        command = sub
    try:
        command.make_context(command.name, list(args))
    except Exception as e:  # typer's click.UsageError (NoSuchOption, BadParameter, ...)
        if hasattr(e, "format_message"):
            raise Refused(e.format_message()) from e
        raise


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_avhgr_command_shown_parses_with_todays_cli(page):
    root = typer.main.get_command(app)
    commands = [line for line in shell_lines(page) if line.startswith("avhgr ")]
    for line in commands:
        args = shlex.split(line)[1:]
        if "..." in args:  # "avhgr preprocess ... --retry-failed": the earlier line's arguments
            continue
        try:
            parse(root, args)
        except Refused as e:
            pytest.fail(f"{page.name}: `{line}`: {e}")


def test_the_check_catches_a_renamed_option():
    root = typer.main.get_command(app)
    parse(root, ["train", "--cache", "c", "--out", "r", "--lam", "0.1"])
    with pytest.raises(Refused, match="--lams"):
        parse(root, ["train", "--cache", "c", "--out", "r", "--lams", "1"])
    with pytest.raises(Refused, match="fgx"):
        parse(root, ["train", "--cache", "c", "--out", "r", "--corr", "fgx"])
    with pytest.raises(Refused, match="no command"):
        parse(root, ["trian", "--cache", "c"])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_script_and_linked_file_exists(page):
    for line in shell_lines(page):
        for script in re.findall(r"(?:python3?|\.venv/bin/python)\s+((?:bench|src)/\S+\.py)", line):
            assert (ROOT / script).exists(), f"{page.name}: `{line}` names {script}, which does not exist"
        for module in re.findall(r"python3?\s+-m\s+(avhgr[\w.]*)", line):
            assert (ROOT / "src" / module.replace(".", "/")).with_suffix(".py").exists() or (ROOT / "src" / module.replace(".", "/")).is_dir(), module
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 12_000, f"README.md is {len(text)} characters"
    first = blocks(ROOT / "README.md", "bash")[0]
    assert first.lstrip().startswith("make demo") and "make test" in first
    for page in PAGES:
        body = page.read_text()
        assert not re.search(r"\bissues?\b|\bcommit [0-9a-f]{7,40}\b|\.\./shared/method\.md", body, re.I), page.name


def test_the_readmes_python_example_runs_as_written(tmp_path, monkeypatch):
    from avhgr.synth import face_photo, place, write_media
    from test_predict import voice

    (example,) = blocks(ROOT / "README.md", "python")
    frames = [place((240, 320), face_photo(), (160, 120), 0.45) for _ in range(50)]
    write_media(tmp_path / "clip.mp4", frames=frames, audio=voice(2.0), sample_rate=48_000)
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(compile(example, "README.md", "exec"), {"print": lambda *a: printed.append(a)})
    emotion, probabilities, face_rate, speech_rate = printed[0]
    assert emotion in probabilities and abs(sum(probabilities.values()) - 1) < 1e-3
    assert face_rate > 0.5 and 0 <= speech_rate <= 1
