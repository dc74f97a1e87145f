"""Self-critical sequence training: the advantage and log-probability math, the objective's
settings and plumbing through the shared trainer, and that it raises CIDEr on a small problem."""

import mmseq
import json

import numpy as np
import pytest
import torch
from caption_helpers import (cider_before_and_after_scst, image_batch, make_caption_model, word_tokenizer,
                             write_caption_corpus)
from pycocoevalcap.cider.cider import Cider

from mmseq.metrics.cider import CiderD
from mmseq.config import load_config
from mmseq.errors import ConfigError, InputError
from mmseq.training.scst import (
    SCSTConfig,
    SelfCriticalObjective,
    draw_candidates,
    reward_text,
    self_critical_advantages,
    sequence_log_probs,
)


@pytest.fixture
def corpus(tmp_path):
    return write_caption_corpus(tmp_path / "corpus")


@pytest.fixture
def tokenizer(tmp_path):
    return word_tokenizer(tmp_path)


def scst_config(**settings) -> SCSTConfig:
    return SCSTConfig(**{"enabled": True, "init_from": "unused", "count": 4, **settings})


def test_advantage_is_the_reward_minus_the_mean_of_the_other_candidates():
    torch.manual_seed(0)
    count = 5
    rewards = torch.rand(3 * count)
    advantages = self_critical_advantages(rewards, count)
    for row in range(3 * count):
        image = row // count
        others = [rewards[j] for j in range(image * count, (image + 1) * count) if j != row]
        assert advantages[row] == pytest.approx(float(rewards[row] - sum(others) / (count - 1)), abs=1e-6)
    torch.testing.assert_close(advantages.view(3, count).sum(1), torch.zeros(3), atol=1e-6, rtol=0)


def test_sequence_log_probs_stop_after_the_first_end_token():
    eos = 2
    logits = torch.randn(2, 4, 7)
    tokens = torch.tensor([[5, 6, eos, eos], [4, 4, 4, 4]])
    log_probs = logits.log_softmax(-1)
    expected = torch.stack([log_probs[0, 0, 5] + log_probs[0, 1, 6] + log_probs[0, 2, eos],
                            sum(log_probs[1, step, 4] for step in range(4))])
    torch.testing.assert_close(sequence_log_probs(logits, tokens, eos), expected)


def test_reward_text_drops_what_the_ptb_tokenizer_drops():
    assert reward_text("Two shapes: a RED circle, and -- a star.") == "two shapes a red circle and a star"
    assert reward_text("a well-known dog's ball") == "a well-known dog's ball"


def test_settings_are_checked():
    assert SCSTConfig().check() == SCSTConfig()  # disabled: nothing to check
    with pytest.raises(ConfigError, match="init_from"):
        SCSTConfig(enabled=True).check()
    with pytest.raises(ConfigError, match="count"):
        scst_config(count=1).check()
    with pytest.raises(ConfigError, match="candidates"):
        scst_config(candidates="greedy").check()
    assert load_config(None, ["scst.enabled=true", "scst.top_k=5"]).scst.top_k == 5


def test_objective_loss_gradient_and_record(tmp_path, corpus, tokenizer):
    model = make_caption_model(tokenizer).train()
    examples, _ = model.task.read(corpus, training=True)  # an image met three times counts once
    objective = SelfCriticalObjective(model, scst_config(temperature=0.7, top_k=5), examples, tmp_path / "out")
    assert objective.scorer.reward(["a red square"], [0])[0] > 0
    # A random model's captions all score 0 (no advantage, no gradient): reward length instead.
    objective.scorer = type("Lengths", (), {"reward": lambda self, texts, _: np.array([len(t) for t in texts], float)})()
    out = objective(image_batch(model, corpus))
    assert out["examples"] == 4 and out["loss_sum"].requires_grad
    out["loss_sum"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert (tmp_path / "out" / "cider_df.json").is_file() and (tmp_path / "out" / "scst.csv").is_file()
    record = mmseq.checkpoint.checkpoint_config(model)["training"]["scst"]
    assert record["reward"] == "CIDEr-D" and record["count"] == 4 and record["temperature"] == 0.7
    assert model.decoder.training  # the objective turns dropout off only inside its step


def test_beam_candidates_and_the_cached_frequencies(tmp_path, corpus, tokenizer):
    model = make_caption_model(tokenizer).train()
    examples, _ = model.task.read(corpus, training=False)
    objective = SelfCriticalObjective(model, scst_config(candidates="beam", count=3), examples, tmp_path)
    batch = image_batch(model, corpus)
    memory, mask = model.encode(batch["inputs"], None)
    candidates = draw_candidates(model, memory, mask, model.route().task.prompt(), objective.config)
    assert candidates.shape[0] == 4 * 3
    assert (candidates == tokenizer.eos_id).any(1).all()  # every candidate ends
    assert torch.isfinite(objective(batch)["loss_sum"])
    # The same references again: the cache is read back, not recomputed, and gives the same scores.
    cached = CiderD([[reward_text(c) for c in e["references"]] for e in examples], tmp_path / "cider_df.json")
    assert cached.document_frequency == objective.scorer.document_frequency


def test_an_image_id_with_two_sets_of_captions_is_refused(tmp_path, corpus, tokenizer):
    model = make_caption_model(tokenizer)
    examples, _ = model.task.read(corpus, training=False)
    examples.append({**examples[0], "references": ["something else"]})
    with pytest.raises(InputError, match="one id per image"):
        SelfCriticalObjective(model, scst_config(), examples, tmp_path)


def greedy_cider(model, batch) -> float:
    model.eval()
    hypotheses = model.decode_texts(batch, beam_size=1)
    references = {i: captions for i, captions in enumerate(batch["references"])}
    return Cider().compute_score(references, {i: [text] for i, text in enumerate(hypotheses)})[0]


def test_scst_raises_cider_on_a_small_fixed_problem(tmp_path, corpus, tokenizer):
    """A captioner trained by cross-entropy without seeing the images says the same thing of every
    image; SCST, rewarded by CIDEr-D, teaches it to name each image's colour."""
    before, after = cider_before_and_after_scst(make_caption_model(tokenizer, seed=0), corpus, tmp_path)
    assert after > before + 0.5, (before, after)


def test_scst_stage_through_the_trainer(tmp_path, corpus, tokenizer):
    """``scst.enabled`` in a config: the trainer starts from the cross-entropy checkpoint, reads one
    example per image, trains the SCST objective and records its settings in the checkpoint."""
    import mmseq
    from mmseq.training.trainer import Trainer

    start = make_caption_model(tokenizer, seed=1)
    mmseq.save(start, tmp_path / "xe")
    out = tmp_path / "scst"
    config = load_config(None, [
        "task=caption", f"output_dir={out}", f"data.train={corpus}", "data.batch_size=4", "data.num_workers=0",
        "trainer.max_steps=2", "trainer.max_epochs=2", "trainer.warmup_steps=1", "trainer.lr=1e-3",
        "scst.enabled=true", f"scst.init_from={tmp_path / 'xe'}", "scst.count=3", "scst.top_k=4",
    ])
    trainer = Trainer(config)
    trainer.train()
    assert len(trainer.train_examples) == 4  # one per image, not one per caption
    saved = json.loads((out / "last" / "config.json").read_text())
    assert saved["training"]["scst"]["count"] == 3 and saved["training"]["scst"]["top_k"] == 4
    assert saved["tokenizer"] == json.loads((tmp_path / "xe" / "config.json").read_text())["tokenizer"]
    assert (out / "cider_df.json").is_file()
    assert len((out / "scst.csv").read_text().splitlines()) == 1 + 2  # a header and one row per batch
    reloaded = mmseq.load(out / "last")
    assert reloaded.training_record["scst"]["reward"] == "CIDEr-D"
    changed = [not torch.equal(a, b) for a, b in zip(start.state_dict().values(), reloaded.state_dict().values())]
    assert any(changed)


def test_scst_needs_a_checkpoint_with_a_caption_task(tmp_path, corpus, tokenizer):
    from conftest import make_model
    from mmseq.training.trainer import Trainer

    mmseq.save(make_model(tokenizer), tmp_path / "xe")  # a speech model
    config = load_config(None, ["task=asr", f"output_dir={tmp_path / 'out'}", f"data.train={corpus}",
                                "scst.enabled=true", f"scst.init_from={tmp_path / 'xe'}"])
    with pytest.raises(ConfigError, match="caption"):
        Trainer(config).train()
