"""Batch jobs of ``transcribe`` / ``caption`` / ``translate``: inputs from folders, globs, manifests
and stdin; results in JSONL, CSV and TSV read back; resume after a kill; failures and the summary."""

import mmseq
import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from caption_helpers import COLORS, make_caption_model, word_tokenizer
from conftest import SAMPLE_RATE, TINY_DECODER, TINY_ENCODER, sentences, tone
from mmseq.inference.run import run_job
from mmseq.inference.sources import Inputs
from mmseq.inference.writers import OutputError, ResultWriter, columns
from mmseq.cli import main


def write_image(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.broadcast_to(np.array(color, dtype=np.uint8), (32, 32, 3))
    Image.fromarray(np.ascontiguousarray(pixels)).save(path)


@pytest.fixture(scope="module")
def caption_job(tmp_path_factory):
    """A saved tiny caption model and a folder tree of images (and files that are not images)."""
    root = tmp_path_factory.mktemp("caption_job")
    model = make_caption_model(word_tokenizer(root))
    mmseq.save(model, root / "ckpt")
    colors = list(COLORS.values())
    images = root / "images"
    names = ["a.png", "b.jpg", "sub/c.PNG", "sub/deeper/d.webp", "sub/e.bmp", "f.png"]
    for k, name in enumerate(names):
        write_image(images / name, colors[k % len(colors)])
    (images / "notes.txt").write_text("not an image\n")
    (images / "sub" / "data.json").write_text("{}\n")
    files = sorted(str(images / name) for name in names)
    expected = dict(zip(files, model.caption(files)))
    return root / "ckpt", images, expected


def read_results(path) -> list[dict]:
    """The rows of a results file (JSONL, CSV or TSV) as dicts."""
    with open(path, encoding="utf-8", newline="") as lines:
        if path.suffix in (".jsonl", ".json"):
            return [json.loads(line) for line in lines if line.strip()]
        return list(csv.DictReader(lines, delimiter="\t" if path.suffix == ".tsv" else ","))


def ids_of(rows):
    return [row["id"] for row in rows]


# -- inputs ---------------------------------------------------------------------------------------------
def test_folders_are_searched_recursively_by_the_task_extensions(caption_job):
    _, images, expected = caption_job
    inputs = Inputs([str(images)], "caption")
    items = list(inputs)
    assert sorted(item.source for item in items) == sorted(expected)  # no .txt, no .json
    assert all(item.id == item.source and item.error is None for item in items)
    assert inputs.count() == len(expected)


def test_globs_manifests_and_plain_files(caption_job, tmp_path):
    _, images, _ = caption_job
    manifest = images / "sub" / "list.jsonl"
    manifest.write_text(json.dumps({"id": "first", "image": "c.PNG"}) + "\n\n"
                        + "{broken\n" + json.dumps({"image": str(images / "a.png")}) + "\n"
                        + json.dumps({"id": "nofield", "audio": "x.wav"}) + "\n")
    try:
        inputs = Inputs([str(images / "**" / "*.png"), str(manifest), str(images / "b.jpg"),
                         str(images / "*.nothing")], "caption")
        items = list(inputs)
    finally:
        manifest.unlink()
    by_glob = [item.source for item in items[:2]]
    assert sorted(by_glob) == [str(images / "a.png"), str(images / "f.png")]  # glob is case-sensitive: not c.PNG
    first, broken, absolute, nofield, plain, nothing = items[2:]
    assert (first.id, first.source) == ("first", str(images / "sub" / "c.PNG"))  # relative to the manifest
    assert broken.error is not None and f"{manifest}:3" in str(broken.error) and broken.id == f"{manifest}:3"
    assert absolute.id == absolute.source == str(images / "a.png") and absolute.error is None
    assert "'image'" in str(nofield.error) and f"{manifest}:5" in str(nofield.error)
    assert plain.source == str(images / "b.jpg") and plain.error is None
    assert "no file matches" in str(nothing.error)


def test_stdin_is_read_lazily_one_line_at_a_time(caption_job):
    _, images, _ = caption_job
    given = []

    def lines():
        for line in [str(images / "a.png"), "", str(images / "sub"), str(images / "f.png")]:
            given.append(line)
            yield line + "\n"

    inputs = Inputs(["-"], "caption", stdin=lines())
    assert inputs.count() is None  # standard input is never read to count it
    stream = iter(inputs)
    assert next(stream).source == str(images / "a.png") and len(given) == 1
    rest = [item.source for item in stream]
    assert rest[-1] == str(images / "f.png")
    assert sorted(rest[:-1]) == sorted(str(p) for p in (images / "sub").rglob("*") if p.suffix.lower()
                                       in (".png", ".webp", ".bmp"))


def test_text_inputs_are_lines_of_files_stdin_and_manifests(tmp_path):
    text = tmp_path / "in.txt"
    text.write_text("12\n\n345\n")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "s1", "source": "67"}) + "\n" + json.dumps({"source": "8"}) + "\n")
    items = list(Inputs([str(text), "-", str(manifest)], "text", stdin=io.StringIO("9\n10\n")))
    assert [(i.id, i.source) for i in items] == [
        (f"{text}:1", "12"), (f"{text}:2", ""), (f"{text}:3", "345"), ("-:1", "9"), ("-:2", "10"),
        ("s1", "67"), (f"{manifest}:2", "8")]
    missing = list(Inputs([str(tmp_path / "gone.txt")], "text"))
    assert len(missing) == 1 and "gone.txt" in str(missing[0].error)


# -- outputs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
def test_each_output_format_reads_back_with_every_result(caption_job, tmp_path, suffix, capsys):
    checkpoint, images, expected = caption_job
    out = tmp_path / f"results{suffix}"
    assert main(["caption", str(checkpoint), str(images), "--output", str(out), "--batch-size", "4"]) == 0
    rows = read_results(out)
    assert sorted(ids_of(rows)) == sorted(expected)
    assert {row["id"]: row["text"] for row in rows} == expected
    if suffix != ".jsonl":
        assert out.read_text().splitlines()[0].split("," if suffix == ".csv" else "\t") == columns(None, True)
        assert all(row["error"] == "" for row in rows)
    captured = capsys.readouterr()
    assert captured.out == ""  # results went to the file only
    assert f"mmseq: {len(expected)} done, 0 failed, " in captured.err


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_nbest_lists_hold_scored_hypotheses_best_first(caption_job, tmp_path, suffix):
    checkpoint, images, _ = caption_job
    out = tmp_path / f"nbest{suffix}"
    assert main(["caption", str(checkpoint), str(images), "--output", str(out), "--nbest", "3"]) == 0
    from mmseq.checkpoint import load
    model = load(checkpoint, "cpu")
    rows = read_results(out)
    assert len(rows) == 6
    for row in rows:
        if suffix == ".jsonl":
            hyps = [(h["text"], h["score"]) for h in row["nbest"]]
        else:
            hyps = [(row["text"], float(row["score"]))] + [(row[f"text_{k}"], float(row[f"score_{k}"]))
                                                           for k in (2, 3) if row[f"score_{k}"]]
        assert len(hyps) == 3 and hyps[0][0] == row["text"]
        scores = [s for _, s in hyps]
        assert scores == sorted(scores, reverse=True) and len({t for t, _ in hyps}) == 3
        # The same n-best list as the model's own beam search of that image.
        batch_inputs, _ = model.route().task.collate_inputs([model.route().task.load_input(row["id"])])
        best = model.generate({"inputs": batch_inputs, "task": "caption"}, beam_size=3, nbest=3)[0]
        assert [model.tokenizer.decode(h.output) for h in best] == [t for t, _ in hyps]
        assert [h.score for h in best] == pytest.approx(scores, abs=1e-3)


def cut_after(path, keep_lines: int) -> None:
    """What a SIGKILL while writing leaves: ``keep_lines`` whole lines and half of the next."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:keep_lines]) + lines[keep_lines][: len(lines[keep_lines]) // 2])


@pytest.mark.parametrize("suffix", [".jsonl", ".tsv"])
def test_resume_after_a_kill_gives_every_input_exactly_once(caption_job, tmp_path, suffix, capsys):
    checkpoint, images, expected = caption_job
    out = tmp_path / f"results{suffix}"
    assert main(["caption", str(checkpoint), str(images), "--output", str(out)]) == 0
    header = 0 if suffix == ".jsonl" else 1
    cut_after(out, header + 2)  # two results kept, the third cut in half
    assert not out.read_text().endswith("\n") and len(out.read_text().splitlines()) == header + 3
    capsys.readouterr()
    assert main(["caption", str(checkpoint), str(images), "--output", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "dropped an unfinished last line" in err
    assert f"{len(expected) - 2} done, 0 failed, 2 skipped" in err
    rows = read_results(out)
    assert sorted(ids_of(rows)) == sorted(expected)  # each exactly once
    assert {row["id"]: row["text"] for row in rows} == expected
    # Resuming a finished file does nothing more.
    assert main(["caption", str(checkpoint), str(images), "--output", str(out), "--resume"]) == 0
    assert "0 done, 0 failed, 6 skipped" in capsys.readouterr().err
    assert len(read_results(out)) == len(expected)


def test_an_existing_output_is_kept_without_resume(caption_job, tmp_path, capsys):
    checkpoint, images, _ = caption_job
    out = tmp_path / "r.jsonl"
    out.write_text('{"id": "x", "text": "kept"}\n')
    assert main(["caption", str(checkpoint), str(images), "--output", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert out.read_text() == '{"id": "x", "text": "kept"}\n'


def test_an_unwritable_output_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    # The checkpoint does not exist either: the output is checked first.
    assert main(["caption", str(tmp_path / "no-checkpoint"), str(tmp_path), "--output",
                 str(blocker / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmseq: error:") and "out.jsonl" in err[0]
    with pytest.raises(OutputError, match="unknown output format"):
        ResultWriter(tmp_path / "out.xlsx")


def test_failures_are_written_counted_and_exit_non_zero_then_redone_by_resume(caption_job, tmp_path, capsys):
    checkpoint, images, expected = caption_job
    folder = tmp_path / "mixed"
    write_image(folder / "good.png", (200, 10, 10))
    (folder / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "r.csv"
    assert main(["caption", str(checkpoint), str(folder), str(images / "a.png"), "--output", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("mmseq: error:")][0].count("bad.png") >= 1
    summary = [line for line in err if " done, " in line]
    assert len(summary) == 1 and summary[0].startswith("mmseq: 2 done, 1 failed, ")
    assert summary[0].endswith(" inputs/s")
    rows = {row["id"]: row for row in read_results(out)}
    assert set(rows) == {str(folder / "good.png"), str(folder / "bad.png"), str(images / "a.png")}
    assert rows[str(folder / "bad.png")]["error"] and not rows[str(folder / "bad.png")]["text"]
    assert rows[str(images / "a.png")]["text"] == expected[str(images / "a.png")]
    # Fixed, the failed input is tried again by --resume and its error line replaced.
    write_image(folder / "bad.png", (10, 10, 200))
    assert main(["caption", str(checkpoint), str(folder), str(images / "a.png"), "--output", str(out),
                 "--resume"]) == 0
    assert "1 done, 0 failed, 2 skipped" in capsys.readouterr().err
    rows = read_results(out)
    assert sorted(ids_of(rows)) == sorted({str(folder / "good.png"), str(folder / "bad.png"), str(images / "a.png")})
    assert all(row["error"] == "" and row["text"] for row in rows)


def test_the_progress_bar_counts_all_inputs(caption_job, capsys):
    checkpoint, images, expected = caption_job
    from mmseq.checkpoint import load
    written = []
    summary = run_job(load(checkpoint, "cpu"), Inputs([str(images)], "caption"),
                      lambda *result: written.append(result), progress=True)
    err = capsys.readouterr().err
    assert f"{len(expected)}/{len(expected)}" in err and "input" in err
    assert (summary.done, summary.failed) == (len(expected), 0)
    assert [item.id for item, *_ in written] == [item.id for item in Inputs([str(images)], "caption")]


# -- transcribe and translate -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def speech_job(tmp_path_factory):
    from mmseq.model import ModelConfig, Seq2Seq
    from mmseq.tokenizer import CharTokenizer

    root = tmp_path_factory.mktemp("speech_job")
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(encoder=dict(TINY_ENCODER), decoder=dict(TINY_DECODER), ctc_weight=0.3),
                    CharTokenizer.train(sentences(50), prompt_tokens=["<|asr|>"]), "asr",
                    {"beam_size": 1, "max_length": 6}).eval()
    mmseq.save(model, root / "ckpt")
    for k, name in enumerate(["a.wav", "b.flac", "x/c.wav"]):
        (root / "audio" / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(root / "audio" / name, tone(0.4, 300 + 100 * k, k), SAMPLE_RATE)
    (root / "audio" / "readme.md").write_text("no audio\n")
    files = sorted(str(p) for p in (root / "audio").rglob("*") if p.suffix in (".wav", ".flac"))
    return root / "ckpt", root / "audio", dict(zip(files, model.transcribe(files)))


def test_transcribe_a_folder_and_a_manifest_into_tsv(speech_job, tmp_path):
    checkpoint, audio, expected = speech_job
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "u1", "audio": str(audio / "a.wav"), "text": "ignored"}) + "\n")
    out = tmp_path / "t.tsv"
    assert main(["transcribe", str(checkpoint), str(audio), str(manifest), "--output", str(out)]) == 0
    rows = read_results(out)
    assert ids_of(rows) == sorted(expected) + ["u1"]
    assert [row["text"] for row in rows] == [expected[f] for f in sorted(expected)] + [expected[str(audio / "a.wav")]]
    assert rows[-1]["path"] == str(audio / "a.wav")


def test_transcribe_paths_from_stdin(speech_job, tmp_path):
    checkpoint, audio, expected = speech_job
    out = tmp_path / "t.jsonl"
    done = subprocess.run([sys.executable, "-m", "mmseq", "transcribe", str(checkpoint), "-", "--output", str(out)],
                          input="\n".join(sorted(expected)) + "\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {row["id"]: row["text"] for row in read_results(out)} == expected
    assert f"mmseq: {len(expected)} done, 0 failed" in done.stderr


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    from mmseq.model import ModelConfig, Seq2Seq
    from mmseq.tokenizer import CharTokenizer

    root = tmp_path_factory.mktemp("text_job")
    torch.manual_seed(0)
    tiny = dict(dim=32, layers=1, heads=2, ffn_dim=64, dropout=0.0)
    config = ModelConfig(encoder={"name": "text", "tokenizer": {"type": "char", "vocab": "0123456789"}, **tiny},
                         decoder=dict(tiny, layers=2, max_length=48), ctc_weight=0.0, label_smoothing=0.0)
    model = Seq2Seq(config, CharTokenizer.train(["one two three"]), "text", {"beam_size": 1, "max_length": 5}).eval()
    mmseq.save(model, root / "ckpt")
    return root / "ckpt", model


def test_translate_prints_one_line_per_input_line(text_checkpoint, tmp_path):
    checkpoint, model = text_checkpoint
    source = tmp_path / "in.txt"
    source.write_text("12\n\n345\n")
    done = subprocess.run([sys.executable, "-m", "mmseq", "translate", str(checkpoint), str(source), "-"],
                          input="6\n78\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == [model.translate(["12"])[0], "", model.translate(["345"])[0],
                                            *model.translate(["6", "78"])]
    out = tmp_path / "t.jsonl"
    assert main(["translate", str(checkpoint), str(source), "--output", str(out)]) == 0
    rows = read_results(out)
    assert [(row["id"], row["text"]) for row in rows] == [
        (f"{source}:1", model.translate(["12"])[0]), (f"{source}:2", ""), (f"{source}:3", model.translate(["345"])[0])]
    assert all("path" not in row for row in rows)


def test_translate_answers_help_with_the_batch_options(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["translate", "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "usage: mmseq translate" in out and all(flag in out for flag in ("--output", "--resume", "--nbest"))
