"""The ``mmseq`` command: help, encoders, eval and transcribe on a tiny trained checkpoint, and
one-line errors with a non-zero exit on bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmseq.cli import main

MMSEQ = Path(sys.executable).parent / "mmseq"


def run(*args):
    """The installed console script in a fresh process: ``(returncode, stdout, stderr)``."""
    command = [str(MMSEQ)] if MMSEQ.exists() else [sys.executable, "-m", "mmseq"]
    done = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return done.returncode, done.stdout, done.stderr


def test_help_of_the_console_script():
    code, out, _ = run("--help")
    assert code == 0
    for command in ("train", "eval", "transcribe", "caption", "encoders"):
        assert command in out


@pytest.mark.parametrize("command", ["train", "eval", "transcribe", "caption", "encoders"])
def test_every_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])
    assert caught.value.code == 0
    assert "usage: mmseq " + command in capsys.readouterr().out


def test_encoders_lists_the_built_in_ones(capsys):
    assert main(["encoders"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"conformer", "transformer", "timm", "torchvision"} <= set(names)


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("mmseq: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_eval_with_a_missing_manifest_is_a_one_line_error(trained, tmp_path, capsys):
    _, out, _ = trained
    missing = tmp_path / "missing.jsonl"
    assert main(["eval", str(out / "best"), str(missing), "--out", str(tmp_path / "eval")]) != 0
    assert str(missing) in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_eval_with_a_missing_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope"), str(tmp_path / "m.jsonl")]) != 0
    assert "nope" in one_line_error(capsys.readouterr().err)


def test_eval_writes_metrics_and_hypotheses(trained, tmp_path, capsys):
    _, out, manifest = trained
    target = tmp_path / "eval"
    assert main(["eval", str(out / "best"), str(manifest), "--out", str(target), "--batch-size", "8",
                 "--beam-size", "2"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((target / "metrics.json").read_text())
    for name in ("wer", "cer", "substitutions", "deletions", "insertions", "words"):
        assert name in metrics and name in printed
    references = [json.loads(line)["text"] for line in manifest.read_text().splitlines()]
    assert metrics["words"] == sum(len(text.split()) for text in references)
    errors = metrics["substitutions"] + metrics["deletions"] + metrics["insertions"]
    assert metrics["wer"] == pytest.approx(100 * errors / metrics["words"], abs=0.01)
    rows = [json.loads(line) for line in (target / "hypotheses.jsonl").read_text().splitlines()]
    assert len(rows) == len(references)
    assert {row["id"] for row in rows} == {f"u{i}" for i in range(len(references))}
    assert all(isinstance(row["hypothesis"], str) for row in rows)


def test_eval_skips_bad_lines_and_counts_them(trained, tmp_path, capsys):
    _, out, manifest = trained
    broken = tmp_path / "broken.jsonl"
    good = manifest.read_text().splitlines()[:3]
    absolute = [json.dumps({**json.loads(line), "audio": str(manifest.parent / json.loads(line)["audio"])})
                for line in good]
    broken.write_text("\n".join(absolute + ["{not json", json.dumps({"audio": "gone.wav", "text": "x"})]) + "\n")
    assert main(["eval", str(out / "best"), str(broken), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 3 and metrics["skipped"] == 2
    err = capsys.readouterr().err
    assert f"{broken}:4" in err and f"{broken}:5" in err


def test_transcribe_prints_one_line_per_file(trained, tmp_path, capsys):
    _, out, manifest = trained
    files = sorted((manifest.parent / "wav").glob("*.wav"))[:3]
    assert main(["transcribe", str(out / "best"), *map(str, files), "--ordered"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert [line.split("\t")[0] for line in lines] == list(map(str, files))
    assert main(["transcribe", str(out / "best"), str(files[0])]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1  # one file: just the text


def test_transcribe_reports_an_unreadable_file_and_goes_on(trained, tmp_path, capsys):
    _, out, manifest = trained
    good = sorted((manifest.parent / "wav").glob("*.wav"))[0]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    assert main(["transcribe", str(out / "best"), str(bad), str(good)]) != 0
    captured = capsys.readouterr()
    assert str(bad) in one_line_error(captured.err)
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(good)]


def test_train_with_an_unknown_setting_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("task: asr\n")
    assert main(["train", str(config), "trainer.epochs=3"]) != 0
    assert "trainer.epochs" in one_line_error(capsys.readouterr().err)


def test_python_api_transcribe(trained):
    import mmseq

    _, out, manifest = trained
    model = mmseq.load(out / "best")
    files = sorted((manifest.parent / "wav").glob("*.wav"))[:2]
    texts = model.transcribe([str(f) for f in files])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
