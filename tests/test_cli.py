"""What the command line tells a user: mistakes in one line (exit 2), bugs as bugs (exit 1, the
traceback kept), and no setting that silently does nothing."""

import json
import subprocess
import sys

import pytest

import avhgr.train
from avhgr.evaluate import evaluate_run
from avhgr.runs import RunError
from avhgr.train import TrainConfig, train

CLI = [sys.executable, "-m", "avhgr"]
TINY = dict(backbone="resnet18", batch_size=16, device="cpu")


@pytest.fixture(scope="module")
def audio_run(tiny, scratch):
    out = scratch / "audio"
    train(TrainConfig(cache=str(tiny / "cache"), out=str(out), modalities=("audio",), epochs=1, **TINY), log=lambda *a: None)
    return out


def run(*args, timeout=300):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_evaluate_missing_without_rate_takes_the_modality_from_every_video_and_refuses_typos(audio_run):
    res = run("evaluate", "--model", audio_run, "--missing", "audio", "--device", "cpu", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["videos_missing"] == out["videos"] == 6 and out["rate"] == 1.0
    assert out["video_accuracy"] == 0.0  # an audio-only model without audio has nothing to go on
    typo = run("evaluate", "--model", audio_run, "--missing", "adio", "--rate", "0")
    words = " ".join(typo.stderr.replace("│", " ").split())
    assert typo.returncode == 2 and "'adio' is not one of 'audio', 'visual', 'both'" in words and "Traceback" not in typo.stderr
    alone = run("evaluate", "--model", audio_run, "--rate", "0.5")
    assert alone.returncode == 2 and "--rate needs --missing" in alone.stderr


def test_evaluate_and_inspect_take_the_path_as_an_option_and_keep_the_bare_path_with_a_note(audio_run, tiny, tmp_path):
    new = run("evaluate", "--model", audio_run, "--device", "cpu", "--json")
    old = run("evaluate", audio_run, "--device", "cpu", "--json")
    assert new.returncode == old.returncode == 0, old.stderr
    assert json.loads(old.stdout) == json.loads(new.stdout)
    assert "is now `avhgr evaluate --model PATH`" in old.stderr and "is now" not in new.stderr
    both = run("evaluate", audio_run, "--model", audio_run)
    assert both.returncode == 2 and "give the path once" in both.stderr
    neither = run("evaluate", "--device", "cpu")
    assert neither.returncode == 2 and "needs --model PATH" in neither.stderr
    sheet = run("inspect", tiny / "cache", "--out", tmp_path / "s.png")
    assert sheet.returncode == 0 and (tmp_path / "s.png").exists() and "--cache PATH" in sheet.stderr


def test_evaluate_on_a_folder_of_seed_runs_gives_each_and_their_mean(audio_run, tmp_path):
    import shutil

    folder = tmp_path / "seeds"
    for name in ("seed0", "seed1"):
        shutil.copytree(audio_run, folder / name)
    res = run("evaluate", "--model", folder, "--device", "cpu", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    one = evaluate_run(audio_run, device="cpu")["video_accuracy"]
    assert set(out["runs"]) == {"seed0", "seed1"} and out["mean_video_accuracy"] == pytest.approx(one)
    text = run("evaluate", "--model", folder, "--device", "cpu")
    assert text.returncode == 0 and "seed1: video accuracy" in text.stdout and "mean over 2 runs" in text.stdout


def test_runs_without_a_test_set_say_so(tiny, tmp_path):
    """--split all --runs 2 ended in a TypeError after training every run; evaluate printed "nan %"."""
    res = run("train", "--cache", tiny / "cache", "--out", tmp_path / "all", "--split", "all", "--runs", "2", "--modalities", "audio",
              "--epochs", "1", "--backbone", "resnet18", "--batch-size", "16", "--device", "cpu", timeout=600)  # fmt: skip
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "trained 2 runs on every video" in res.stdout
    assert json.loads((tmp_path / "all" / "summary.json").read_text())["mean"] is None
    with pytest.raises(RunError, match="no test videos to evaluate"):
        evaluate_run(tmp_path / "all" / "seed0", device="cpu")


def test_a_bug_in_train_is_reported_as_one_and_keeps_its_traceback(tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from avhgr.cli import app

    def bug(*args, **kwargs):
        raise ValueError("an internal ValueError, not the user's mistake")

    monkeypatch.setattr(avhgr.train, "train_run", bug)
    out = tmp_path / "run"
    out.mkdir()
    res = CliRunner().invoke(app, ["train", "--cache", str(tiny / "cache"), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 1 and "internal error, a bug in avhgr" in res.output
    assert "an internal ValueError" in (out / "errors.log").read_text()  # the traceback, where the user will look
    mistake = CliRunner().invoke(app, ["train", "--cache", str(tiny / "cache"), "--out", str(out), "--corr", "fgx"])
    # refused by the parser, before anything loads, with the valid values
    assert mistake.exit_code == 2 and "'fgx' is not one of 'fgh', 'fg'" in " ".join(mistake.output.replace("│", " ").split())


def test_folds_without_fold_is_refused(tiny, tmp_path):
    res = run("train", "--cache", tiny / "cache", "--out", tmp_path / "r", "--split", "actor", "--folds", "3")
    assert res.returncode == 2 and "--folds needs --fold" in res.stderr


def test_study_takes_trains_names_and_keeps_the_old_ones_with_a_note(tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import avhgr.study
    from avhgr.cli import app

    seen = []
    monkeypatch.setitem(avhgr.study.STUDIES, "stability", lambda opt: seen.append((opt.layers, opt.lams)))
    base = ["study", "stability", "--cache", str(tiny / "cache"), "--out", str(tmp_path / "s"), "--device", "cpu"]
    new = CliRunner().invoke(app, [*base, "--fusion-layers", "1,2", "--lam", "0.1,1"])
    assert new.exit_code == 0, new.output
    monkeypatch.setattr(sys, "argv", ["avhgr", *base, "--layers", "1", "--lams", "1"])
    old = CliRunner().invoke(app, [*base, "--layers", "1", "--lams", "1"])
    assert old.exit_code == 0, old.output
    assert seen == [((1, 2), (0.1, 1.0)), ((1,), (1.0,))]
    assert "study --lams is now --lam" in old.output and "study --layers is now --fusion-layers" in old.output
    assert "is now" not in new.output
