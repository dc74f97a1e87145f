"""One model shape: a model is a table of task routes. Every command and API method serves every
task of single-task speech, caption and text checkpoints and of a multitask one, needing ``--task``
only when the input does not say; routes may share an encoder; ``val_metric: <task>/<metric>``
keeps the best by that metric's own direction; SCST trains the caption route of a multitask model."""

import json
from pathlib import Path

import pytest
import torch

import mmseq
from conftest import TINY_DECODER, TINY_ENCODER
from mmseq.cli import main
from mmseq.errors import InputError
from mmseq.model import ModelConfig, Seq2Seq

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
INPUTS = LEGACY / "inputs"
AUDIO, IMAGES, TEXTS = [str(INPUTS / "a0.wav"), str(INPUTS / "a1.wav")], [str(INPUTS / "i0.png")], ["305", "12"]
COMMAND_INPUTS = {"transcribe": AUDIO, "caption": IMAGES, "translate": None}
API = {"transcribe": AUDIO, "caption": IMAGES, "translate": TEXTS}
TASKS_OF = {"speech": ["asr"], "caption": ["caption"], "text": ["text"], "multitask": ["asr", "caption", "text"]}
KIND = {"transcribe": "asr", "caption": "caption", "translate": "text"}


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "sources.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    return path


@pytest.mark.parametrize("checkpoint", list(TASKS_OF))
@pytest.mark.parametrize("command", list(COMMAND_INPUTS))
def test_every_command_serves_every_task_or_names_the_tasks(checkpoint, command, capsys, text_file):
    model = mmseq.load(LEGACY / checkpoint)
    inputs = COMMAND_INPUTS[command] or [text_file]
    code, out, err = run(capsys, command, LEGACY / checkpoint, *inputs, "--ordered")
    if KIND[command] in TASKS_OF[checkpoint]:
        expected = getattr(model, command)(API[command])
        assert code == 0, err
        if command == "translate":
            assert out.splitlines() == expected  # one line per input line, in order
        else:
            lines = out.splitlines()
            assert [line.split("\t")[-1] for line in lines] == expected if len(inputs) > 1 else out.strip() == expected[0]
    else:
        assert code == 2 and out == ""
        [line] = err.strip().splitlines()  # one line: no traceback
        assert f"no task of kind {KIND[command]!r}" in line and f"its tasks: {', '.join(TASKS_OF[checkpoint])}" in line
        with pytest.raises(InputError, match=f"its tasks: {', '.join(TASKS_OF[checkpoint])}"):
            getattr(model, command)(API[command])


@pytest.mark.parametrize("checkpoint", list(TASKS_OF))
def test_eval_and_average_serve_every_checkpoint(checkpoint, capsys, tmp_path):
    lines = {"asr": [{"id": f"a{i}", "audio": path, "text": "red cat"} for i, path in enumerate(AUDIO)],
             "caption": [{"id": "i0", "image": IMAGES[0], "captions": ["a red square"]}],
             "text": [{"id": f"t{i}", "source": s, "text": "three zero five"} for i, s in enumerate(TEXTS)]}
    tasks = TASKS_OF[checkpoint]
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for task in tasks for line in lines[task]))
    code, _, err = run(capsys, "eval", LEGACY / checkpoint, manifest, "--out", tmp_path / "eval")
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    headline = {"asr": "wer", "caption": "CIDEr", "text": "bleu"}
    names = [headline[t] if len(tasks) == 1 else f"{t}/{headline[t]}" for t in tasks]
    assert set(names) <= set(metrics) and metrics["examples"] == sum(len(lines[t]) for t in tasks)

    code, _, err = run(capsys, "average", LEGACY / checkpoint, LEGACY / checkpoint, "--out", tmp_path / "avg")
    assert code == 0, err
    averaged, original = mmseq.load(tmp_path / "avg"), mmseq.load(LEGACY / checkpoint)
    assert set(averaged.routes) == set(original.routes)
    for name, value in original.state_dict().items():
        assert torch.equal(averaged.state_dict()[name], value), name


def test_task_is_needed_only_when_the_input_does_not_say(tmp_path, capsys):
    """Two speech routes over one shared encoder: audio no longer says which; ``--task`` does."""
    tokenizer = mmseq.load(LEGACY / "speech").tokenizer
    torch.manual_seed(0)
    config = ModelConfig(decoder=dict(TINY_DECODER), tasks={
        "asr": {"encoder": dict(TINY_ENCODER), "ctc_weight": 0.3},
        "asr_short": {"task": "asr", "encoder": "asr", "decoding": {"max_length": 3}, "prompt": "<|asr|> <|short|>"}})
    model = Seq2Seq(config, tokenizer).eval()
    assert list(model.encoders) == ["asr"] and model.route("asr_short").encoder is model.route("asr").encoder
    assert model.route("asr_short").task.prompt() == [tokenizer.token_id("<|asr|>"), tokenizer.token_id("<|short|>")]
    folder = mmseq.save(model, tmp_path / "two")
    loaded = mmseq.load(folder)
    assert loaded.route("asr_short").encoder is loaded.route("asr").encoder  # still shared after loading
    code, _, err = run(capsys, "transcribe", folder, AUDIO[0])
    assert code == 2 and "say which with --task" in err and "asr_short (asr)" in err
    code, out, err = run(capsys, "transcribe", folder, AUDIO[0], "--task", "asr_short")
    assert code == 0 and out.strip() == loaded.transcribe(AUDIO[:1], task="asr_short")[0]
    assert len(loaded.tokenizer.encode(out.strip())) <= 3  # the route's own decoding settings
    # A multitask model's one speech route needs no name for audio.
    code, out, _ = run(capsys, "transcribe", LEGACY / "multitask", *AUDIO, "--ordered")
    assert code == 0 and [line.split("\t")[1] for line in out.splitlines()] == \
        mmseq.load(LEGACY / "multitask").transcribe(AUDIO)


def test_val_metric_of_a_task_keeps_the_best_by_its_own_direction(tmp_path):
    """``val_metric: caption/CIDEr`` ranks checkpoints highest first (CIDEr is better higher),
    ``asr/wer`` lowest first, whatever the model's other tasks."""
    import yaml

    from conftest import write_speech_corpus
    from mmseq.config import load_config
    from mmseq.training.trainer import Trainer

    from caption_helpers import TINY_IMAGE_ENCODER, write_caption_corpus

    speech = write_speech_corpus(tmp_path / "speech", count=4)
    captions = write_caption_corpus(tmp_path / "captions")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(captions.read_text().replace('"img/', f'"{tmp_path / "captions" / "img"}/')
                     + speech.read_text().replace('"wav/', f'"{tmp_path / "speech" / "wav"}/'))
    for metric, higher in (("caption/CIDEr", True), ("asr/wer", False)):
        out = tmp_path / metric.replace("/", "_")
        config = {"output_dir": str(out), "data": {"train": str(mixed), "batch_size": 1.0, "num_workers": 0},
                  "model": {"decoder": dict(TINY_DECODER), "tasks": {
                      "asr": {"encoder": dict(TINY_ENCODER), "batch_size": 2.0},
                      "caption": {"encoder": {**TINY_IMAGE_ENCODER, "dim": 32}, "batch_size": 4}}},
                  "trainer": {"device": "cpu", "keep_best": 2, "keep_last": 1, "val_metric": metric}}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        trainer = Trainer(load_config(tmp_path / "config.yaml"))
        trainer.setup()
        try:
            for step, value in enumerate([0.1, 0.5, 0.3], start=1):
                trainer.state["step"] = step
                assert trainer.save(value)
        finally:
            trainer.lock.release()
        kept = [value for value, _ in trainer.state["best"]]
        assert kept == ([0.5, 0.3] if higher else [0.1, 0.3]), metric
        best_step = 2 if higher else 1
        assert (out / "best").resolve().name == f"step-{best_step:08d}"


def test_scst_trains_the_caption_route_of_a_multitask_model(tmp_path):
    """The fixed small problem of tests/test_scst.py, on the caption route of a model that also
    has a text route: SCST raises CIDEr."""
    from caption_helpers import TINY_IMAGE_ENCODER, cider_before_and_after_scst, word_tokenizer, write_caption_corpus

    corpus = write_caption_corpus(tmp_path)
    tokenizer = word_tokenizer(tmp_path)
    torch.manual_seed(0)
    text_encoder = dict(name="text", tokenizer={"type": "char", "vocab": "0123456789"}, dim=32, layers=1, heads=2,
                        ffn_dim=64, dropout=0.0)
    config = ModelConfig(decoder=dict(dim=32, layers=2, heads=2, ffn_dim=64, dropout=0.0, max_length=32),
                         label_smoothing=0.0, tasks={"caption": {"encoder": dict(TINY_IMAGE_ENCODER)},
                                                     "text": {"encoder": text_encoder}})
    model = Seq2Seq(config, tokenizer, decoding={"max_length": 8})
    before, after = cider_before_and_after_scst(model, corpus, tmp_path)
    assert after > before + 0.5, (before, after)
