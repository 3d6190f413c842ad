"""Every shell command of the README and docs/usage.md, run as written, in order, on generated
clips and small datasets laid out as the docs say (`videos/<label>/`, RAVDESS's `Actor_NN/`
names, an OpenFace table): a renamed option, a changed folder layout or a command that needs a
step the page does not show fails here. test_docs only parses them.

What is appended to a line only makes it small (fewer windows, one epoch, small faces, one worker
process, the CPU; `study --quick`, whose smaller grid applies only where the page gives none, as
the paper's full grid is some thirty runs): options given twice take the last value, so the line
as written is still what is parsed (test_docs). Each command must exit 0 and leave what it is for:
a cache, a run's model.json, a study's table, a new image, a prediction per file, an accuracy.
Lines that cannot run in a test (a camera, a server, the Makefile, the shell) are skipped, and the
skipped set is checked to be exactly those."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from avhgr.cli import app
from test_docs import ROOT, shell_lines

SKIPPED = re.compile(r"^(make |source |avhgr (watch|serve)\b)")

# Only size and device; never a choice the docs make (corr, split, modalities, grids, paths). A run
# --init-from another gets the same stage-1 sizes, as a user's would (a different stage 1 is refused).
SMALL = {
    "preprocess": ["--windows", "4", "--face-size", "32", "--detect-size", "320", "--min-face", "30", "--workers", "1", "--device", "cpu"],
    "preprocess:features": ["--windows", "4", "--workers", "1"],
    "train": ["--epochs", "1", "--joint-epochs", "1", "--windows-per-epoch", "2", "--batch-size", "16", "--device", "cpu"],
    "train:one-modality": ["--epochs", "1", "--windows-per-epoch", "2", "--batch-size", "16", "--device", "cpu"],
    "study": ["--quick", "--runs", "1", "--batch-size", "16", "--device", "cpu"],
    "evaluate": ["--device", "cpu"],
    "inspect": [],
    "predict": ["--device", "cpu"],
}


def small(args: list[str]) -> list[str]:
    command = args[0]
    if command == "preprocess" and "--visual-features" in args:
        command = "preprocess:features"
    elif command == "train" and ("--modalities" in args or "product" in args):  # one modality, or the product: no stage 2
        command = "train:one-modality"
    return args + SMALL[command]


def voice(seconds: float, pitch: float, sr: int = 48_000) -> np.ndarray:
    """A voice-like sound (harmonics of a wavering pitch, in syllables) that the speech test passes."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(pitch * (1 + 0.05 * np.sin(2 * np.pi * 1.5 * t))) / sr
    syllables = np.clip(np.sin(2 * np.pi * 3 * t), 0, None) ** 1.5
    return (0.3 * syllables * sum(np.sin(k * phase) / k for k in range(1, 7))).astype(np.float32)


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> Path:
    """What a user of the docs has before the first command: clips, a folder of labelled videos,
    RAVDESS (6 actors, the six emotions) and its speech with an OpenFace table."""
    from avhgr.datasets import RAVDESS_EMOTIONS
    from avhgr.demo import EASY, CorpusSpec, build_corpus
    from avhgr.synth import face_photo, place, write_media

    root = tmp_path_factory.mktemp("docs_material")
    corpus = root.parent / f"{root.name}_corpus"
    build_corpus(corpus, CorpusSpec(per_class=6, duration=1.2, **EASY))
    code = {label: k for k, label in RAVDESS_EMOTIONS.items()}
    rng = np.random.default_rng(0)
    rows = []
    for clip in sorted(corpus.glob("*.mp4")):
        label, k = clip.stem.rsplit("_", 1)
        actor = int(k) + 1
        (root / "videos" / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, root / "videos" / label / clip.name)
        take = f"01-{code[label]:02d}-01-01-01-{actor:02d}"
        (root / "data" / "RAVDESS" / f"Actor_{actor:02d}").mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, root / "data" / "RAVDESS" / f"Actor_{actor:02d}" / f"01-{take}.mp4")
        (root / "speech" / f"Actor_{actor:02d}").mkdir(parents=True, exist_ok=True)
        wav = f"Actor_{actor:02d}/03-{take}.wav"
        sf.write(root / "speech" / wav, voice(1.5, 120 + 25 * code[label]), 48_000)
        rows.append([wav, *(rng.normal(code[label] == c, 0.2) for c in range(3, 9))])
    shutil.copy(root / "speech" / rows[0][0], root / "take.wav")
    rows.append(["take.wav", *rows[0][1:]])
    header = ["file", "AU01_r", "AU02_r", "AU04_r", "AU05_r", "AU06_r", "AU07_r"]
    (root / "openface_au.csv").write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")
    frames = [place((240, 320), face_photo(), (160, 120), 0.45) for _ in range(50)]
    write_media(root / "clip.mp4", frames=frames, audio=voice(2.0, 160), sample_rate=48_000)
    for name in ("my_video.mp4", "talk.mp4"):
        shutil.copy(root / "clip.mp4", root / name)
    shutil.rmtree(corpus)
    return root


def run_page(page: Path, cwd: Path, monkeypatch) -> list[str]:
    """Run the page's commands in order in ``cwd``; fail at the first that does not exit 0 or does
    not write what it names with --out or --plot. Returns the lines skipped."""
    monkeypatch.chdir(cwd)
    runner, skipped, previous = CliRunner(), [], {}
    for line in shell_lines(page):
        if SKIPPED.match(line):
            skipped.append(line)
            continue
        assert line.startswith("avhgr "), f"{page.name}: `{line}` is neither an avhgr command nor a known skip"
        args = shlex.split(line)[1:]
        if "..." in args:  # "avhgr preprocess ... --retry-failed": the arguments of the page's last preprocess
            i = args.index("...")
            args = args[:i] + previous[args[0]] + args[i + 1 :]
        previous[args[0]] = args[1:]
        with monkeypatch.context() as env:
            if "auto" in args and args[args.index("auto") - 1] == "--shard":  # a one-task SLURM array
                env.setenv("SLURM_ARRAY_TASK_ID", "0")
                env.setenv("SLURM_ARRAY_TASK_COUNT", "1")
            started = time.time() - 1  # file times are whole seconds on some file systems
            result = runner.invoke(app, small(args))
        assert result.exit_code == 0, f"{page.name}: `{line}` exited {result.exit_code}:\n{result.output}\n{result.exception!r}"
        problem = what_is_missing(args, result.stdout, started)
        assert problem is None, f"{page.name}: `{line}` exited 0 but {problem}:\n{result.output}"
    return skipped


def what_is_missing(args: list[str], stdout: str, started: float) -> str | None:
    """What a command that exited 0 failed to leave behind (None: all there)."""
    option = lambda name: Path(args[args.index(name) + 1]) if name in args else None  # noqa: E731
    fresh = lambda p: p.exists() and p.stat().st_mtime >= started  # noqa: E731
    command, out = args[0], option("--out")
    if command == "preprocess" and not (out / "index.csv").exists():
        return f"{out} is not a cache"
    if command == "train" and not (fresh(out / "model.json") or any(fresh(p) for p in out.glob("seed*/model.json"))):
        return f"{out} has no model trained now"
    if command == "study" and not fresh(out / f"{args[1]}.md"):
        return f"{out / (args[1] + '.md')} was not written"
    if command == "inspect" and not fresh(out or Path("sheet.png")):  # inspect's default --out
        return f"{out} was not written"
    if command == "evaluate" and "accuracy" not in stdout:
        return "it printed no accuracy"
    if command == "predict":
        files = [a for a in args[1 : next((i for i, a in enumerate(args) if a.startswith("--")), len(args))]]
        if option("--plot") is not None and not fresh(option("--plot")):
            return f"{option('--plot')} was not drawn"
        if "--json" in args:
            results = [json.loads(row) for row in stdout.splitlines() if row.startswith("{")]
            if len(results) != len(files) or any(r.get("emotion") is None for r in results):
                return f"it gave {len(results)} JSON results with an emotion for {len(files)} files"
            if "--timeline" in args and not all(r.get("timeline") for r in results):
                return "--timeline gave no timeline"
        elif [row.split(":")[0] for row in stdout.splitlines() if row.strip()] != files:
            return f"it printed no line for each of {files}"
    return None


def copy_material(material: Path, to: Path) -> Path:
    shutil.copytree(material, to, copy_function=shutil.copy)
    return to


def test_every_command_of_docs_usage_runs_as_written(material, tmp_path, monkeypatch):
    cwd = copy_material(material, tmp_path / "user")
    skipped = run_page(ROOT / "docs" / "usage.md", cwd, monkeypatch)
    assert {s.split()[1] for s in skipped} == {"watch"}, skipped
    # What the commands wrote is where the next ones (and the page's words) look for it.
    assert sorted(p.name for p in (cwd / "runs" / "seeds").iterdir() if p.is_dir()) == [f"seed{i}" for i in range(5)]
    for study in ("stability", "missing", "semi"):
        assert (cwd / "studies" / f"{study}.md").exists(), study


def test_every_command_of_the_readme_runs_as_written(material, tmp_path, monkeypatch):
    cwd = copy_material(material, tmp_path / "user")
    skipped = run_page(ROOT / "README.md", cwd, monkeypatch)
    assert skipped == ["make demo", "make test", "make setup", "source .venv/bin/activate",
                       "avhgr watch /dev/video0 --format v4l2", "avhgr serve"]  # fmt: skip
    assert (cwd / "t.png").stat().st_size > 1000 and (cwd / "runs" / "fgh" / "model.json").exists()
    for study in ("stability", "missing", "semi"):
        assert (cwd / "studies" / f"{study}.md").exists(), study


def test_the_runner_catches_a_command_that_does_not_run(tmp_path, monkeypatch):
    """A page whose command parses but stops (a folder the page never made) fails the run."""
    page = tmp_path / "page.md"
    page.write_text("```bash\navhgr evaluate --model runs/never-trained\n```\n")
    with pytest.raises(AssertionError, match="runs/never-trained. exited 2"):
        run_page(page, tmp_path, monkeypatch)
    page.write_text("```bash\navhgr watch /dev/video0\navhgr serve --port 8000\n```\n")
    assert run_page(page, tmp_path, monkeypatch) == ["avhgr watch /dev/video0", "avhgr serve --port 8000"]
    # Exit 0 is not enough: a command must leave what it is for.
    (tmp_path / "runs" / "old").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "model.json").write_text("{}")
    assert "no model trained now" in what_is_missing(["train", "--cache", "c", "--out", "runs/old"], "", time.time() + 5)
    assert "no accuracy" in what_is_missing(["evaluate", "--model", "runs/old"], "", time.time())
    assert "2 files" in what_is_missing(["predict", "a.mp4", "b.mp4", "--json"], '{"emotion": "fear"}\n', time.time())
    assert what_is_missing(["predict", "a.mp4", "--json"], '{"emotion": "fear"}\n', time.time()) is None
