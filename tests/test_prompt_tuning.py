"""Prompt tuning (mmseq/prompt_tuning.py): a trained text model learns a new task by soft prompt
vectors only. Only the vectors change; the folder holds the pointer and the vectors; loading it
(or applying it with --prompt-tuning) gives one model; a base with other weights is refused;
the logged trainable count is right; a resumed run ends as one never stopped."""

import json
import re
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import mmseq
from mmseq.config import load_config
from mmseq.errors import CheckpointError, ConfigError
from mmseq.adapters import add_route
from mmseq.checkpoint import apply_prompt_tuning, file_sha256
from mmseq.tasks import ExampleDataset, TaskTable
from mmseq.training.trainer import train

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TINY = dict(dim=32, layers=1, heads=2, ffn_dim=64, dropout=0.1)
VECTORS = 4


def write_manifest(path, pairs, task=None):
    extra = {"task": task} if task else {}
    path.write_text("".join(json.dumps({"id": f"s{i}", **extra, "source": s, "text": t}) + "\n"
                            for i, (s, t) in enumerate(pairs)))
    return path


def spell(number: str) -> str:
    return " ".join(DIGITS[int(d)] for d in number)


def write_config(path, config):
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


TRAINER = {"lr": 0.01, "warmup_steps": 2, "schedule": "noam", "device": "cpu", "log_every": 1,
           "keep_best": 1, "keep_last": 1, "weight_decay": 0.0}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny text model trained to spell numbers digit by digit: its ``best`` folder."""
    root = tmp_path_factory.mktemp("base")
    train_file = write_manifest(root / "train.jsonl", [(str(n), spell(str(n))) for n in range(60)])
    config = {"task": "text", "output_dir": str(root / "out"),
              "data": {"train": str(train_file), "valid": str(train_file), "batch_size": 48, "num_workers": 0},
              "tokenizer": {"type": "char"},
              "model": {"encoder": {"name": "text", "tokenizer": {"type": "char", "train_from": str(train_file)}, **TINY},
                        "decoder": dict(TINY, layers=2, max_length=48), "ctc_weight": 0.0},
              "trainer": {**TRAINER, "max_epochs": 6},
              "decoding": {"beam_size": 1, "max_length": 30}}
    train(load_config(write_config(root / "config.yaml", config)))
    return (root / "out" / "checkpoints").resolve() / sorted(p.name for p in (root / "out" / "checkpoints").iterdir())[-1]


def tuning_config(folder, base, epochs=3, **settings):
    """A prompt-tuning run on the new task "reversed": the digits read out last to first."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [(str(n), spell(str(n)[::-1])) for n in range(10, 50)]
    train_file = write_manifest(folder / "train.jsonl", pairs, task="reversed")
    config = {"output_dir": str(folder / "out"),
              "data": {"train": str(train_file), "valid": str(train_file), "batch_size": 40, "num_workers": 0},
              "trainer": {**TRAINER, "lr": 0.05, "max_epochs": epochs},
              "prompt_tuning": {"base": str(base), "task": "reversed", "vectors": VECTORS, **settings}}
    return write_config(folder / "config.yaml", config)


@pytest.fixture(scope="module")
def tuned(base, tmp_path_factory):
    """``(run folder, captured log)`` of a three-epoch prompt-tuning run from ``base``."""
    root = tmp_path_factory.mktemp("tuned")
    config = tuning_config(root, base)
    capture = []
    import mmseq.training.trainer as trainer_module

    log = trainer_module.Trainer.log_message
    trainer_module.Trainer.log_message = lambda self, text: (capture.append(text), log(self, text))[1]
    try:
        train(load_config(config))
    finally:
        trainer_module.Trainer.log_message = log
    return root / "out", "\n".join(capture)


def test_only_the_soft_prompt_changes_and_the_folder_holds_only_it(base, tuned):
    out, _ = tuned
    folder = out / "last"
    weights = load_file(str(folder / "model.safetensors"))
    assert list(weights) == ["decoder.soft_prompt"] and weights["decoder.soft_prompt"].shape == (VECTORS, 32)
    pointer = json.loads((folder / "config.json").read_text())["prompt_tuning"]
    assert pointer["base_sha256"] == file_sha256(base / "model.safetensors")
    assert pointer["base"] == str(base) and pointer["task"] == "reversed" and pointer["from_task"] == "text"
    assert not list(folder.glob("tokenizer*"))  # the base's own files are not copied
    assert (folder / "model.safetensors").stat().st_size * 20 < (base / "model.safetensors").stat().st_size

    model = mmseq.load(folder)
    before = load_file(str(base / "model.safetensors"))
    after = model.state_dict()
    assert set(after) == set(before) | {"decoder.soft_prompt"}
    assert [name for name in before if not torch.equal(before[name], after[name])] == []  # bit for bit
    start = mmseq.load(base)
    start.decoder.add_soft_prompt(VECTORS)  # the vectors the run started from
    assert not torch.equal(start.decoder.soft_prompt, after["decoder.soft_prompt"])
    assert torch.equal(after["decoder.soft_prompt"], weights["decoder.soft_prompt"])


def test_the_logged_trainable_count_is_the_prompts_and_the_size_is_logged(base, tuned):
    out, log = tuned
    found = re.search(r"(\d+) trainable parameters of (\d+) \(([\d.]+) %\)", log)
    total = sum(t.numel() for t in load_file(str(base / "model.safetensors")).values()) + VECTORS * 32
    assert found and int(found[1]) == VECTORS * 32 and int(found[2]) == total
    assert float(found[3]) == pytest.approx(100 * VECTORS * 32 / total, rel=1e-2)
    size = (out / "last" / "model.safetensors").stat().st_size
    assert f"model.safetensors {size} bytes" in log


def new_task_loss(model, route, manifest) -> float:
    """Mean loss per example of ``model``'s route ``route`` on the examples of ``manifest``."""
    table = TaskTable({route: model.routes[route].task})
    examples, _ = table.read(manifest, training=False)
    dataset = ExampleDataset(table, examples, training=False)
    with torch.no_grad():
        return model.eval()(table.collate([dataset[i] for i in range(len(dataset))]))["attention_loss"].item()


def test_the_tuned_task_learned_and_the_base_task_is_untouched(base, tuned):
    out, _ = tuned
    model, plain = mmseq.load(out / "last"), mmseq.load(base)
    numbers = [str(n) for n in range(10, 60)]
    assert model.translate(numbers, task="text") == plain.translate(numbers)
    # The new task's loss fell from that of the vectors the run started from (this base is too
    # small and briefly trained to learn it well: recipes/synth_text measures a real one).
    start = mmseq.load(base)
    add_route(start, "reversed", None, VECTORS)
    manifest = out.parent / "train.jsonl"
    assert new_task_loss(model, "reversed", manifest) < 0.97 * new_task_loss(start, "reversed", manifest)


def test_loading_the_folder_and_applying_it_to_the_base_give_one_model(base, tuned, tmp_path):
    from mmseq.cli import main

    out, _ = tuned
    numbers = ["12", "47", "305", "9"]
    by_folder = mmseq.load(out / "last").translate(numbers, task="reversed")
    model = apply_prompt_tuning(mmseq.load(base), out / "last", base)
    assert model.translate(numbers, task="reversed") == by_folder
    (tmp_path / "in.txt").write_text("\n".join(numbers) + "\n")
    assert main(["translate", str(base), str(tmp_path / "in.txt"), "--prompt-tuning", str(out / "last"),
                 "--task", "reversed", "--output", str(tmp_path / "out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["text"] for row in rows] == by_folder


def test_a_base_whose_weights_differ_is_refused(base, tuned, tmp_path, capsys):
    from mmseq.cli import main

    out, _ = tuned
    other = tmp_path / "other"
    shutil.copytree(base, other)
    weights = load_file(str(other / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(other / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        apply_prompt_tuning(mmseq.load(other), out / "last", other)
    message = str(error.value)
    assert str(other / "model.safetensors") in message and str(out / "last" / "model.safetensors") in message
    assert "\n" not in message
    (tmp_path / "in.txt").write_text("12\n")
    assert main(["translate", str(other), str(tmp_path / "in.txt"), "--prompt-tuning", str(out / "last")]) != 0
    assert "is not the base" in capsys.readouterr().err

    # mmseq.load(folder) checks its base too: a copy of the run tuned from `other`, then `other` changed.
    tuned_copy = tmp_path / "tuned"
    shutil.copytree(out / "last", tuned_copy)
    config = json.loads((tuned_copy / "config.json").read_text())
    config["prompt_tuning"].update(base=str(other), base_absolute=str(other),
                                   base_sha256=file_sha256(base / "model.safetensors"))
    (tuned_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="is not the base"):
        mmseq.load(tuned_copy)
    shutil.copy(base / "model.safetensors", other / "model.safetensors")  # the right weights again
    assert mmseq.load(tuned_copy).translate(["12"], task="reversed") == \
        mmseq.load(out / "last").translate(["12"], task="reversed")


def test_a_resumed_run_ends_as_one_never_stopped(base, tuned, tmp_path):
    out, _ = tuned
    config = tuning_config(tmp_path, base, epochs=1)
    train(load_config(config))
    train(load_config(config, ["trainer.max_epochs=3"]))
    state = json.loads((tmp_path / "out" / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 3 and len(list((tmp_path / "out" / "checkpoints").iterdir())) <= 2  # rotated
    assert torch.equal(load_file(str(tmp_path / "out" / "last" / "model.safetensors"))["decoder.soft_prompt"],
                       load_file(str(out / "last" / "model.safetensors"))["decoder.soft_prompt"])
    with pytest.raises(ConfigError, match="vectors"):  # resumed with other settings: refused
        train(load_config(config, ["trainer.max_epochs=4", f"prompt_tuning.vectors={VECTORS + 1}"]))


def test_training_every_weight_through_the_same_route_is_the_baseline(base, tmp_path):
    config = tuning_config(tmp_path, base, epochs=1, train="all")
    train(load_config(config))
    folder = tmp_path / "out" / "last"
    weights = load_file(str(folder / "model.safetensors"))
    before = load_file(str(base / "model.safetensors"))
    assert set(weights) == set(before) | {"decoder.soft_prompt"}
    assert any(not torch.equal(before[name], weights[name]) for name in before)
    model = mmseq.load(folder)
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())


@pytest.mark.parametrize("override, message", [
    ("prompt_tuning.vectors=0", "prompt_tuning.vectors=0"),
    ("prompt_tuning.train=some", "prompt_tuning.train"),
    ("prompt_tuning.task=null", "prompt_tuning.task"),
    ("trainer.ema=0.99", "trainer.ema"),
])
def test_bad_settings_are_refused_before_any_work(base, tmp_path, override, message):
    config = tuning_config(tmp_path, base)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(config, [override])


def test_a_new_task_named_as_one_of_the_base_is_refused(base, tmp_path):
    config = tuning_config(tmp_path, base)
    with pytest.raises(ConfigError, match="already has a task"):
        train(load_config(config, ["prompt_tuning.task=text"]))


def test_more_vectors_than_the_decoder_holds_are_refused_in_one_line(base, tmp_path):
    config = tuning_config(tmp_path, base)
    with pytest.raises(ConfigError, match=r"prompt_tuning.vectors=60: the base's decoder holds 48 tokens"):
        train(load_config(config, ["prompt_tuning.vectors=60"]))
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_soft_prompt_vectors_take_no_positions():
    """The tokens after a soft prompt keep the positions they have without it: with no layers a
    token's logits are its embedding and position alone, so they are the same with and without."""
    from mmseq.decoder import DecoderConfig, TextDecoder

    torch.manual_seed(0)
    decoder = TextDecoder(DecoderConfig(vocab_size=11, dim=8, layers=0, heads=2, ffn_dim=16, dropout=0.0,
                                        max_length=20)).eval()
    memory, mask = torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)
    plain = torch.tensor([[1, 4, 5, 6, 7]])
    without = decoder(plain, memory, mask)
    soft = decoder.add_soft_prompt(3)
    with_soft = decoder(torch.tensor([[1, *soft, 4, 5, 6, 7]]), memory, mask)
    assert torch.allclose(with_soft[0, [0, 4, 5, 6, 7]], without[0], atol=1e-6)


@pytest.mark.parametrize("deep", [False, True])
def test_a_search_over_a_soft_prompt_follows_teacher_forcing(deep):
    """Incremental decoding (the prefix fed at once, then a token a step, rows repeated for a
    beam and selected) gives the logits teacher forcing gives, with deep prompts too."""
    from mmseq.decoder import DecoderConfig, TextDecoder

    torch.manual_seed(0)
    decoder = TextDecoder(DecoderConfig(vocab_size=11, dim=8, layers=3, heads=2, ffn_dim=16, dropout=0.0,
                                        max_length=20)).eval()
    soft = decoder.add_soft_prompt(3, deep=deep)
    with torch.no_grad():
        decoder.soft_prompt.normal_()
        if deep:
            assert decoder.deep_prompt.shape == (2, 3, 8)
            decoder.deep_prompt.normal_()
    memory, mask = torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
    tokens = torch.tensor([[1, *soft, 4, 5, 6, 7], [1, *soft, 4, 8, 9, 3]])
    full = decoder(tokens, memory, mask)
    prefix = 5
    with torch.no_grad():
        cache = decoder.init_cache(memory, mask).repeat(2).select(torch.tensor([0, 2]))
        steps = [decoder.step(tokens[:, :prefix], cache)]
        steps += [decoder.step(tokens[:, i:i + 1], cache) for i in range(prefix, tokens.shape[1])]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_deep_prompt_tuning_keeps_its_per_layer_vectors_in_the_small_folder(base, tmp_path):
    config = tuning_config(tmp_path, base, epochs=1, deep=True)
    train(load_config(config))
    folder = tmp_path / "out" / "last"
    weights = load_file(str(folder / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {"decoder.soft_prompt": (VECTORS, 32),
                                                               "decoder.deep_prompt": (1, VECTORS, 32)}
    model = mmseq.load(folder)
    before = load_file(str(base / "model.safetensors"))
    assert [name for name in before if not torch.equal(before[name], model.state_dict()[name])] == []
    applied = apply_prompt_tuning(mmseq.load(base), folder, base)
    assert applied.translate(["12", "305"], task="reversed") == model.translate(["12", "305"], task="reversed")


def test_onnx_export_refuses_a_prompt_tuned_route(tuned, tmp_path):
    pytest.importorskip("onnx")
    from mmseq.exporters.onnx import export_onnx

    out, _ = tuned
    with pytest.raises(ConfigError, match="prompt-tuned"):
        export_onnx(out / "last", tmp_path / "onnx", task="reversed")
    assert not (tmp_path / "onnx").exists()


def test_lora_adapters_travel_in_the_small_folder_and_learn_more_than_the_prompt(base, tuned, tmp_path):
    from mmseq.adapters import add_lora, decoder_projections

    config = tuning_config(tmp_path, base, lora=2)
    train(load_config(config, ["trainer.lr=0.01"]))
    folder = tmp_path / "out" / "last"
    weights = load_file(str(folder / "model.safetensors"))
    lora = sorted(name for name in weights if name != "decoder.soft_prompt")
    assert lora and all(re.fullmatch(r"decoder\.layers\.\d\.(self_qkv|self_out|cross_q|cross_kv|cross_out)\.lora_[ab]",
                                     name) for name in lora)
    assert any(name.endswith("lora_b") and weights[name].abs().sum() > 0 for name in lora)  # B starts at zero
    assert (folder / "model.safetensors").stat().st_size * 5 < (base / "model.safetensors").stat().st_size

    model = mmseq.load(folder)
    numbers = ["12", "47", "305"]
    applied = apply_prompt_tuning(mmseq.load(base), folder, base)
    assert applied.translate(numbers, task="reversed") == model.translate(numbers, task="reversed")
    before = load_file(str(base / "model.safetensors"))
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items() if name in before)
    # Zero-initialised B: the adapters alone (before training) leave the base's outputs as they were.
    plain = mmseq.load(base)
    fresh = mmseq.load(base)
    add_lora(decoder_projections(fresh.decoder), 2)
    assert fresh.translate(numbers) == plain.translate(numbers)
    manifest = tmp_path / "train.jsonl"
    prompt_only, _ = tuned
    assert new_task_loss(model, "reversed", manifest) < new_task_loss(mmseq.load(prompt_only / "last"), "reversed", manifest)


def test_encoder_lora_adapts_every_linear_layer_of_the_encoder_and_travels_in_the_folder(base, tmp_path):
    config = tuning_config(tmp_path, base, epochs=1, lora_encoder=2)
    train(load_config(config, ["trainer.lr=0.01"]))
    folder = tmp_path / "out" / "last"
    weights = load_file(str(folder / "model.safetensors"))
    encoder = sorted(name for name in weights if name.startswith("encoders."))
    linears = [name for name, layer in mmseq.load(base).encoders.named_modules() if isinstance(layer, torch.nn.Linear)]
    assert linears and len(encoder) == 2 * len(linears) and all(name.endswith((".lora_a", ".lora_b")) for name in encoder)
    assert not any(name.startswith("decoder.layers") for name in weights)  # lora: 0, the decoder untouched
    assert mmseq.load(folder).prompt_tuning["lora_encoder"] == 2
    numbers = ["12", "47"]
    applied = apply_prompt_tuning(mmseq.load(base), folder, base)
    assert applied.translate(numbers, task="reversed") == mmseq.load(folder).translate(numbers, task="reversed")
    # The adapters belong to the new route: the base's own route runs on the base weights, to the bit.
    manifest = write_manifest(tmp_path / "base.jsonl", [(str(n), spell(str(n))) for n in range(10, 30)])
    plain = mmseq.load(base)
    assert new_task_loss(applied, "text", manifest) == new_task_loss(plain, "text", manifest)
    assert new_task_loss(applied, "reversed", manifest) != new_task_loss(plain, "text", manifest)
    assert new_task_loss(applied, "text", manifest) == new_task_loss(plain, "text", manifest)  # switched back
    with pytest.raises(ConfigError, match="lora_encoder"):  # resumed with another rank
        train(load_config(config, ["prompt_tuning.lora_encoder=4", "trainer.max_epochs=2"]))
