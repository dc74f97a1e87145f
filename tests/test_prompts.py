"""Prompts as data: per-example prompts and contexts in manifests, derived controls, dropout; the
search forces exactly the prefix training showed, and a batch mixing prefix lengths decodes as
its inputs one at a time."""

import mmseq
import json

import pytest
import torch
from torch.nn import functional as F

from conftest import TINY_DECODER, TINY_ENCODER, sentences, waveform_batch
from mmseq.errors import ConfigError, InputError
from mmseq.model import ModelConfig, Seq2Seq
from mmseq.prompts import Prompting, prompt_tokens_of
from mmseq.tasks import ExampleDataset
from mmseq.tokenizer import CharTokenizer

TOKENS = ["<|asr|>", "<|caption|>", "<|text|>", "<|short|>", "<|long|>", "<|noisy|>", "<|context|>"]


def speech_model(prompting=None, seed=0):
    torch.manual_seed(seed)
    tokenizer = CharTokenizer.train(sentences(100), prompt_tokens=TOKENS)
    config = ModelConfig(encoder=dict(TINY_ENCODER), decoder=dict(TINY_DECODER), ctc_weight=0.3,
                         label_smoothing=0.0, prompting=prompting or {})
    return Seq2Seq(config, tokenizer, "asr").eval()


def example(i, wave, text, **fields):
    return {"id": f"u{i}", "audio": wave, "duration": len(wave) / 16000, "text": text,
            "references": [text], "_where": f"m.jsonl:{i + 1}", "task": "asr", **fields}


def waves(seconds):
    batch = waveform_batch(seconds)
    return [batch["inputs"][i, : batch["lengths"][i]] for i in range(len(seconds))]


@torch.no_grad()
def teacher_forced(model, memory, mask, prefix, tokens, limit):
    """Summed log-probability of ``tokens`` and ``</s>`` after ``prefix``, the sequence given whole
    (at the length ``limit`` the search appends ``</s>`` at no cost)."""
    sequence = torch.tensor([prefix + tokens + [model.tokenizer.eos_id]])
    log_probs = model.decoder(sequence[:, :-1], memory, mask).log_softmax(-1)[0]
    scored = log_probs[len(prefix) - 1:].gather(1, sequence[0, len(prefix):, None])[:, 0]
    return float(scored[:-1].sum() if len(tokens) + 1 >= limit else scored.sum())


def test_a_row_holds_context_then_prompt_and_only_the_text_is_scored():
    model = speech_model()
    tok = model.tokenizer
    [wave] = waves([0.6])
    items = ExampleDataset(model.task, [example(0, wave, "red cat", prompt="<|short|> the", context="a dog")],
                           training=True)
    item = items[0]
    row = item["tokens"][0]
    context = [tok.token_id("<|context|>")] + tok.encode("a dog")
    prefix = context + [tok.bos_id, tok.token_id("<|asr|>"), tok.token_id("<|short|>")] + tok.encode("the")
    assert row == prefix + tok.encode("red cat") + [tok.eos_id]
    assert item["prefix_lengths"] == [len(prefix)]
    batch = model.task.collate([item, items[0] | {"tokens": [[tok.bos_id, tok.token_id("<|asr|>")]
                                                             + tok.encode("red cat") + [tok.eos_id]],
                                                  "prefix_lengths": [2]}])
    out = model(batch)
    # Scored: "red cat" and </s> of each row; nothing of the context or the prompt.
    assert int(out["tokens"]) == 2 * (len("red cat") + 1)
    assert batch["prompts"][0] == [tok.token_id("<|short|>")] + tok.encode("the")
    assert batch["contexts"][0] == context
    # The context conditions the loss (the same text, scored after another context, scores otherwise).
    other = ExampleDataset(model.task, [example(0, wave, "red cat", prompt="<|short|> the", context="the sun")],
                           training=True)
    assert not torch.isclose(model(model.task.collate([other[0]]))["loss"], model(model.task.collate([item]))["loss"])


def test_the_search_forces_exactly_the_prefix_training_shows():
    model = speech_model()
    tok = model.tokenizer
    [wave] = waves([0.8])
    item = ExampleDataset(model.task, [example(0, wave, "x", prompt="<|short|>", context="blue hat")], training=False)[0]
    batch = model.task.collate([item])
    for beam in (1, 3):
        [hyps] = model.generate(batch, beam_size=beam, max_length=8, length_penalty=0.0)
        hyp = hyps[0]
        assert hyp.prompt == [tok.token_id("<|asr|>"), tok.token_id("<|short|>")]
        memory, mask = model.encode(batch["inputs"], batch["lengths"])
        prefix = batch["contexts"][0] + [tok.bos_id] + hyp.prompt
        assert hyp.log_prob == pytest.approx(teacher_forced(model, memory, mask, prefix, hyp.tokens, 8), abs=1e-4)
        # Without the context the same hypothesis scores otherwise: the context was forced.
        without = teacher_forced(model, memory, mask, [tok.bos_id] + hyp.prompt, hyp.tokens, 8)
        assert abs(without - hyp.log_prob) > 1e-3
    # The context is forced, never output: the decoded text is the hypothesis alone.
    [greedy] = model.generate(batch, max_length=8)
    assert model.decode_texts(batch, max_length=8) == [tok.decode(greedy[0].tokens)]


@pytest.mark.parametrize("options", [dict(beam_size=1), dict(beam_size=3, nbest=3),
                                     dict(beam_size=3, ctc_weight=0.3), dict(beam_size=2, max_length=4)])
def test_a_batch_mixing_prompts_and_context_lengths_decodes_as_one_input_at_a_time(options):
    model = speech_model()
    inputs = waves([0.5, 0.9, 0.7, 1.1, 0.6])
    fields = [{}, {"context": "cat"}, {"prompt": "<|short|>", "context": "a much longer context of words"},
              {"prompt": "<|long|> the"}, {"context": ["alpha", "beta", "gamma"]}]
    examples = [example(i, w, "x", **f) for i, (w, f) in enumerate(zip(inputs, fields))]
    dataset = ExampleDataset(model.task, examples, training=False)
    options = {"max_length": 10, **options}
    together = model.generate(model.task.collate([dataset[i] for i in range(len(examples))]), **options)
    for i in range(len(examples)):
        [alone] = model.generate(model.task.collate([dataset[i]]), **options)
        assert [h.tokens for h in together[i]] == [h.tokens for h in alone], i
        assert [h.prompt for h in together[i]] == [h.prompt for h in alone]
        torch.testing.assert_close([h.log_prob for h in together[i]], [h.log_prob for h in alone], atol=1e-4, rtol=0)


def test_prompt_and_context_arguments_take_one_value_or_one_per_input():
    model = speech_model()
    batch = waveform_batch([0.5, 0.8])
    batch["task"] = "asr"
    each = model.generate(batch, prompt=["<|short|>", None], context=["red", ["blue", "green"]], max_length=6)
    first = model.generate({**batch, "inputs": batch["inputs"][:1], "lengths": batch["lengths"][:1]},
                           prompt="<|short|>", context="red", max_length=6)
    assert each[0][0].tokens == first[0][0].tokens and each[0][0].prompt[-1] == model.tokenizer.token_id("<|short|>")
    shared = model.generate(batch, context="blue, green", max_length=6)
    listed = model.generate(batch, context=[["blue", "green"], "blue, green"], max_length=6)
    assert [h[0].tokens for h in shared] == [h[0].tokens for h in listed]
    with pytest.raises(InputError, match="3 values for 2 inputs"):
        model.generate(batch, context=["a", "b", "c"])


def test_context_keeps_its_last_tokens_up_to_the_configured_length():
    model = speech_model({"context_length": 5})
    tok = model.tokenizer
    assert model.route().task.context_ids("one two three") == [tok.token_id("<|context|>")] + tok.encode("three")
    assert model.route().task.context_ids(None) == [] and model.route().task.context_ids([]) == []


def test_a_listed_context_is_joined_as_the_route_says():
    tok = speech_model().tokenizer
    assert speech_model().route().task.context_ids(["red", "blue"])[1:] == tok.encode("red, blue")
    assert speech_model({"context_join": " "}).route().task.context_ids(["red", "blue"])[1:] == tok.encode("red blue")
    with pytest.raises(ConfigError, match="context_join"):
        speech_model({"context_join": 3})


def test_derived_controls_come_from_the_target_in_training_and_from_fields_always():
    prompting = {"controls": [{"attribute": "words", "bins": {"<|short|>": 2, "<|long|>": None}},
                              {"field": "noise", "values": {"noisy": "<|noisy|>"}}]}
    model = speech_model(prompting)
    tok = model.tokenizer
    short, long, noisy = (tok.token_id(t) for t in ("<|short|>", "<|long|>", "<|noisy|>"))
    [wave] = waves([0.5])
    examples = [example(0, wave, "red cat"), example(1, wave, "a red cat sat", noise="noisy"),
                example(2, wave, "cat", noise="clean", prompt="<|long|>")]
    train = ExampleDataset(model.task, examples, training=True)
    prompts = [train[i]["tokens"][0][2:train[i]["prefix_lengths"][0]] for i in range(3)]
    assert prompts == [[short], [long, noisy], [short, long]]
    # Decoding never reads the reference: only the field's control and the line's prompt are forced.
    evaluation = ExampleDataset(model.task, examples, training=False)
    assert [evaluation[i]["prompt"] for i in range(3)] == [[], [noisy], [long]]
    assert [evaluation[i]["tokens"][0][2:evaluation[i]["prefix_lengths"][0]] for i in range(3)] == [[], [noisy], [long]]


def test_prompt_and_context_dropout_leave_them_out_of_a_share_of_examples_the_same_way_each_time():
    model = speech_model({"prompt_dropout": 0.5, "context_dropout": 0.25})
    tok = model.tokenizer
    [wave] = waves([0.3])
    examples = [example(i, wave, "cat", prompt="<|short|>", context="dog") for i in range(400)]
    dataset = ExampleDataset(model.task, examples, training=True, seed=1)
    rows = [dataset[i]["tokens"][0] for i in range(400)]
    with_prompt = sum(tok.token_id("<|short|>") in row for row in rows) / 400
    with_context = sum(row[0] == tok.token_id("<|context|>") for row in rows) / 400
    assert 0.4 < with_prompt < 0.6 and 0.67 < with_context < 0.83
    assert rows == [dataset[i]["tokens"][0] for i in range(400)]  # the same draw for an example in its epoch
    dataset.epoch = 1
    assert rows != [dataset[i]["tokens"][0] for i in range(400)]  # another in the next
    assert [ExampleDataset(model.task, examples, training=False)[i]["prompt"] for i in range(3)] == \
        [[tok.token_id("<|short|>")]] * 3  # never dropped when decoding


def test_prompting_settings_are_checked_with_one_line_errors():
    with pytest.raises(ConfigError, match="unknown attribute 'length'"):
        Prompting.from_settings({"controls": [{"attribute": "length", "bins": {"<|s|>": 3}}]}, "route x")
    with pytest.raises(ConfigError, match="increasing order"):
        Prompting.from_settings({"controls": [{"attribute": "words", "bins": {"<|a|>": 9, "<|b|>": 3}}]}, "r")
    with pytest.raises(ConfigError, match="prompt_dropout"):
        Prompting.from_settings({"prompt_dropout": 1.5}, "r")
    with pytest.raises(ConfigError, match="unknown setting 'dropout'"):
        Prompting.from_settings({"dropout": 0.1}, "r")
    with pytest.raises(ConfigError, match="written <\\|name\\|>"):
        Prompting.from_settings({"controls": [{"field": "f", "values": {"a": "short"}}]}, "r")


def test_the_tokenizer_learns_the_tokens_the_config_and_the_manifest_use():
    routes = {"caption": {"prompting": {"controls": [{"attribute": "words", "bins": {"<|short|>": 8, "<|long|>": None}}]}},
              "asr": {"prompt": "<|asr|> <|en|>"}}
    lines = [{"prompt": "<|formal|> <|brief|> dear sir"}, {"context": "names"}, {"prompt": "plain text <|not|>"}]
    assert prompt_tokens_of(lines, routes) == ["<|short|>", "<|long|>", "<|asr|>", "<|en|>", "<|formal|>",
                                               "<|brief|>", "<|context|>"]


def test_a_model_trained_with_prompts_and_contexts_keeps_them_through_its_checkpoint(tmp_path):
    """`mmseq train` on a manifest whose lines carry prompts and contexts: the tokenizer learns
    their tokens, the checkpoint keeps the route's prompting, and eval forces each line's own."""
    import yaml

    from conftest import tone
    import soundfile

    from mmseq.config import load_config
    from mmseq.inference.evaluate import evaluate
    from mmseq.checkpoint import load
    from mmseq.training.trainer import train

    texts = sentences(12, seed=3)
    lines = []
    for i, text in enumerate(texts):
        path = tmp_path / f"{i}.wav"
        soundfile.write(path, tone(0.4 + 0.05 * i, 300 + 20 * i, i), 16000)
        lines.append({"id": f"u{i}", "audio": str(path), "text": text, "context": texts[i - 1],
                      **({"prompt": "<|casual|>"} if i % 2 else {})})
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = {"task": "asr", "output_dir": str(tmp_path / "out"),
              "data": {"train": str(manifest), "valid": str(manifest), "batch_size": 4.0, "num_workers": 0},
              "tokenizer": {"type": "char"},
              "model": {"encoder": dict(TINY_ENCODER), "decoder": dict(TINY_DECODER), "ctc_weight": 0.3,
                        "prompting": {"context_length": 6, "context_dropout": 0.5}},
              "trainer": {"max_epochs": 1, "device": "cpu", "log_every": 1}, "decoding": {"max_length": 5}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    best = train(load_config(tmp_path / "c.yaml"))
    model = load(best)
    assert {"<|casual|>", "<|context|>"} <= set(model.tokenizer.prompt_tokens)
    task = model.route().task
    assert task.prompting.context_length == 6 and task.prompting.context_dropout == 0.5
    seen = []
    original = model.generate

    def spy(batch, **options):
        seen.extend(zip(batch["ids"], batch["prompts"], batch["contexts"]))
        return original(batch, **options)

    model.generate = spy
    evaluate(model, manifest, tmp_path / "eval", num_workers=0)
    by_id = {i: (p, c) for i, p, c in seen}
    casual, context = model.tokenizer.token_id("<|casual|>"), model.tokenizer.token_id("<|context|>")
    assert by_id["u1"][0] == [casual] and by_id["u2"][0] == []
    assert by_id["u2"][1] == [context] + model.tokenizer.encode(texts[1])[-6:]


def test_long_audio_with_previous_text_gives_each_window_the_text_before_it():
    from mmseq.inference.longform import Window, decode_windows

    calls = []

    def decode(pieces, prompts, contexts):
        calls.append(list(contexts))
        return [f"w{int(piece[0])}" for piece in pieces]

    recordings = [torch.arange(30.0), torch.arange(100.0, 120.0), torch.tensor([7.0])]
    plans = [[Window(0, 10), Window(10, 20), Window(20, 30)], [Window(0, 10), Window(10, 20)], [Window(0, 1)]]
    texts = decode_windows(recordings, plans, ["p"] * 3, ["q"] * 3, decode, ["names", None, "x"], previous_text=True)
    assert texts == ["w0 w10 w20", "w100 w110", "w7"]
    # Round k decodes the k-th window of every recording together; later windows see the text before.
    assert calls == [["names", None, "x"], ["w0", "w100"], ["w10"]]
    calls.clear()
    decode_windows(recordings, plans, ["p"] * 3, ["q"] * 3, decode, ["names", None, "x"])
    assert calls == [["names"] * 3 + [None] * 2 + ["x"]]  # all at once, each with its recording's context


def test_transcribe_takes_each_manifest_lines_prompt_and_context_and_the_commands_flags(tmp_path):
    import subprocess
    import sys

    import soundfile

    model = speech_model(seed=1)
    model.decoding.max_length = 12  # a random model never ends: keep its texts short
    folder = mmseq.save(model, tmp_path / "ckpt")
    paths, lines = [], []
    for i, seconds in enumerate([0.5, 0.7, 0.9]):
        path = tmp_path / f"a{i}.wav"
        soundfile.write(path, waves([seconds])[0].numpy(), 16000)
        paths.append(str(path))
    fields = [{"context": "red hat"}, {"prompt": "<|short|>"}, {}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"id": f"u{i}", "audio": p, **f}) + "\n"
                                              for i, (p, f) in enumerate(zip(paths, fields))))
    command = [sys.executable, "-m", "mmseq", "transcribe", str(folder), str(tmp_path / "m.jsonl"), "--ordered"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = dict(line.split("\t", 1) for line in out.stdout.splitlines())
    expected = model.transcribe(paths, prompt=[None, "<|short|>", None], context=["red hat", None, None])
    assert [got[f"u{i}"] for i in range(3)] == expected
    flags = subprocess.run([sys.executable, "-m", "mmseq", "transcribe", str(folder), paths[2], "--context", "red hat",
                            "--prompt", "<|short|>"], capture_output=True, text=True, timeout=120)
    assert flags.returncode == 0, flags.stderr
    assert flags.stdout.strip() == model.transcribe(paths[2], prompt="<|short|>", context="red hat")[0]


def test_a_context_given_to_a_model_never_trained_with_contexts_is_refused_in_one_line(tiny_model):
    batch = waveform_batch([0.5])
    with pytest.raises(InputError, match="not trained with contexts"):
        tiny_model.generate(batch, context="red hat")
