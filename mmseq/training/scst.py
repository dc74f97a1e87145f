"""Self-critical sequence training (SCST, Rennie et al. 2017): a second training stage that raises
the CIDEr-D of the captions the model itself produces.

For each image of a batch the model draws ``count`` candidate captions without gradient (sampled
with a temperature and top-k, or the ``count`` best of a beam), each candidate is scored by
CIDEr-D against the image's training references (:class:`mmseq.metrics.cider.CiderD`, document
frequencies from all training references, computed once and cached in the output folder), and
the model's log-probability of each candidate is recomputed with gradient by teacher forcing.
The baseline of a candidate is the mean reward of the image's other candidates (Luo 2020, "a
better variant of SCST"), so no extra greedy decode is needed and the advantages of an image sum
to zero:

    loss = - sum over images and candidates of (reward - baseline) * log p(candidate) / count

summed over the batch's images, like the cross-entropy ``loss_sum``: the trainer divides by the
images of the optimizer step. The decoder runs without dropout in both passes, so the scored
log-probabilities are those of the policy that drew the candidates.

The stage plugs into the shared trainer through the ``scst`` section of the config: it starts from
the cross-entropy checkpoint ``scst.init_from``, reads one training example per image (all of its
captions are the references), and trains :class:`SelfCriticalObjective` (a module around the model
whose ``forward(batch)`` returns the same keys as the model's own). The reward settings go into
every checkpoint's ``config.json`` under ``training.scst``; each batch's mean reward goes to
``OUTPUT_DIR/scst.csv``.
"""

from __future__ import annotations

import csv
import re
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import load
from ..config import SCSTConfig
from ..decoding.options import DecodingOptions
from ..decoding.search import beam_search, sample
from ..errors import ConfigError, InputError
from ..metrics.cider import CiderD
from .stages import Stage



# Punctuation the PTB tokenizer of the caption metrics splits off and drops: removed from candidates
# and references alike, so that "shapes:" and "shapes" are one word to the reward as to the metric.
_PUNCTUATION = re.compile(r"[.,:;!?\"`()\[\]{}]|(?<!\w)-+|-+(?!\w)")


def reward_text(caption: str) -> str:
    """A caption as the reward sees it: lowercase, punctuation dropped, single spaces.

    >>> reward_text("Two shapes: a red circle, and -- a star.")
    'two shapes a red circle and a star'
    """
    return " ".join(_PUNCTUATION.sub(" ", caption.lower()).split())


def self_critical_advantages(rewards: torch.Tensor, count: int) -> torch.Tensor:
    """Each candidate's reward minus the mean reward of the other candidates of its image.

    Args:
        rewards: ``(images * count,)``, the candidates of one image next to each other.
        count: candidates per image (at least 2).

    Returns:
        ``(images * count,)`` advantages; those of one image sum to zero.

    >>> self_critical_advantages(torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 3.0]), 3)
    tensor([-1.5000,  0.0000,  1.5000, -1.5000, -1.5000,  3.0000])
    """
    grouped = rewards.view(-1, count)
    baseline = (grouped.sum(1, keepdim=True) - grouped) / (count - 1)
    return (grouped - baseline).view(-1)


def sequence_log_probs(logits: torch.Tensor, tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """Summed log-probabilities of generated sequences, up to and including their first ``</s>``.

    Args:
        logits: ``(rows, steps, vocab)``, the decoder's output at the positions that predict
            ``tokens``.
        tokens: ``(rows, steps)`` generated ids, padded with ``</s>`` after the end.

    Returns:
        ``(rows,)`` float32 sums (with gradient through ``logits``).
    """
    log_probs = logits.float().log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)  # (rows, steps)
    is_eos = (tokens == eos).long()
    scored = (is_eos.cumsum(1) - is_eos) == 0  # every token before the first </s>, and that </s>
    return (log_probs * scored).sum(1)


@torch.no_grad()
def draw_candidates(model, memory: torch.Tensor, memory_mask: torch.Tensor, prompt: list[int],
                    config: SCSTConfig) -> torch.Tensor:
    """``config.count`` candidates per input, sampled or from a beam (see :class:`SCSTConfig`).

    Args:
        model: a :class:`~mmseq.model.Seq2Seq` (its ``decoding.max_length`` unless ``config.max_length``).
        memory: ``(inputs, frames, dim)``; memory_mask: ``(inputs, frames)``.
        prompt: ids forced after ``<s>`` (the task token).

    Returns:
        new ids ``(inputs * count, steps)``, the candidates of one input next to each other, each
        ending with ``</s>`` and padded with it.
    """
    count, eos = config.count, model.tokenizer.eos_id
    max_length = config.max_length or model.decoding.max_length
    if config.candidates == "sample":
        options = DecodingOptions(max_length=max_length, temperature=config.temperature, top_k=config.top_k)
        tokens = sample(model, memory, memory_mask, prompt, options, count=count)
        return torch.nn.functional.pad(tokens, (0, 1), value=eos)  # a row cut at the limit still ends
    options = DecodingOptions(beam_size=count, nbest=count, max_length=max_length)
    rows = []
    for hyps in beam_search(model, memory, memory_mask, prompt, options):
        # A beam may finish fewer than count hypotheses: the last one stands in for the missing.
        rows += [hyp.tokens for hyp in hyps] + [hyps[-1].tokens] * (count - len(hyps))
    tokens = torch.full((len(rows), max(map(len, rows)) + 1), eos, dtype=torch.long, device=memory.device)
    for row, ids in enumerate(rows):
        tokens[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return tokens


def record(config: SCSTConfig) -> dict:
    """The reward settings a checkpoint's ``config.json`` keeps under ``training.scst``."""
    return {**asdict(config), "reward": "CIDEr-D", "baseline": "mean of the other candidates"}


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


class SelfCriticalObjective(nn.Module):
    """The SCST loss of a model, as a module the trainer calls (and DDP wraps) in its place.

    Args:
        model: a :class:`~mmseq.model.Seq2Seq` (its parameters are this module's parameters).
        config: the ``scst`` settings.
        examples: the training examples (``id`` and ``references`` of each image; an image met
            several times counts once).
        output_dir: where the document frequency cache and ``scst.csv`` go.

    ``forward(batch)`` takes the task's training batch and returns ``loss_sum`` (summed over the
    batch's images), ``loss`` (per image), ``examples`` (images), ``reward`` (mean CIDEr-D of the
    candidates), and ``correct``/``tokens`` as zeros (token accuracy means nothing here).
    """

    def __init__(self, model, config: SCSTConfig, examples: list[dict], output_dir):
        super().__init__()
        self.model, self.config = model, config.check()
        references: dict[str, list[str]] = {}
        for example in examples:
            captions = list(example["references"])
            if references.setdefault(example["id"], captions) != captions:
                raise InputError(f"{example.get('_where', example['id'])}: image id {example['id']!r} is used by "
                                 "two images with different captions; SCST needs one id per image")
        self.index = {image_id: position for position, image_id in enumerate(references)}
        output_dir = Path(output_dir)
        self.cache_path = output_dir / config.document_frequency_file
        # Only the main process writes the cache; the others compute the same frequencies in memory.
        self.scorer = CiderD([[reward_text(c) for c in captions] for captions in references.values()],
                             cache_path=self.cache_path if _is_main() else None, sigma=config.sigma)
        self.log_path = output_dir / "scst.csv" if _is_main() else None
        self.batches = 0
        model.training_record["scst"] = record(config)

    def forward(self, batch: dict) -> dict:
        model, count = self.model, self.config.count
        tokenizer = model.tokenizer
        images = batch["inputs"].shape[0]
        try:
            indices = [self.index[image_id] for image_id in batch["ids"]]
        except KeyError as error:
            raise InputError(f"SCST: image {error.args[0]!r} is not among the training images") from None
        route = model.route(batch.get("task"))  # a caption route (the trainer's batches name it)
        memory, memory_mask = route.encoder(batch["inputs"], batch.get("lengths"))
        prompt = route.task.prompt()
        prefix = torch.tensor([tokenizer.bos_id] + prompt, device=memory.device)
        decoder_was_training = model.decoder.training
        model.decoder.eval()  # no dropout: score the very policy that drew the candidates
        try:
            # (images * count, steps): the candidates of one image next to each other
            new = draw_candidates(model, memory.detach(), memory_mask, prompt, self.config)
            # Read back before the teacher-forced pass is queued: on a GPU the reward (on the
            # CPU) then runs while the forward pass does.
            candidates = new.tolist()
            tokens = torch.cat([prefix.expand(new.shape[0], -1), new], 1)
            logits = model.decoder(tokens[:, :-1], memory.repeat_interleave(count, 0),
                                   memory_mask.repeat_interleave(count, 0))
        finally:
            model.decoder.train(decoder_was_training)
        log_probs = sequence_log_probs(logits[:, len(prefix) - 1:], new, tokenizer.eos_id)  # (images * count,)

        texts = [reward_text(tokenizer.decode(row)) for row in candidates]
        rewards = torch.from_numpy(self.scorer.reward(texts, [i for i in indices for _ in range(count)])).float()
        self._log(rewards, texts)
        advantages = self_critical_advantages(rewards, count).to(log_probs.device)
        loss_sum = -(advantages * log_probs).sum() / count
        zero = torch.zeros((), device=log_probs.device)
        return {"loss_sum": loss_sum, "loss": loss_sum / images, "examples": images,
                "reward": float(rewards.mean()), "correct": zero, "tokens": zero}

    def _log(self, rewards: torch.Tensor, texts: list[str]) -> None:
        """One row per batch in ``scst.csv``: mean reward, mean of each image's best, mean words."""
        self.batches += 1
        if self.log_path is None:
            return
        new = not self.log_path.exists()
        with open(self.log_path, "a", newline="") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(["time", "batch", "reward", "best_reward", "words"])
            best = float(rewards.view(-1, self.config.count).amax(1).mean())
            words = sum(len(text.split()) for text in texts) / max(len(texts), 1)
            writer.writerow([round(time.time(), 1), self.batches, round(float(rewards.mean()), 4),
                             round(best, 4), round(words, 2)])


class SelfCriticalStage(Stage):
    """The SCST stage of a run (``scst.enabled``): it starts from the cross-entropy checkpoint
    ``scst.init_from``, reads one training example per image (all its captions are the references)
    and trains :class:`SelfCriticalObjective`."""

    one_example_per_reference = False

    def start_model(self):
        """The cross-entropy checkpoint the stage starts from (weights, tokenizer, settings)."""
        settings = self.config.scst.check()
        model = load(settings.init_from)
        if not any(route.kind == "caption" for route in model.routes.values()):
            raise ConfigError(f"scst.init_from={settings.init_from}: SCST trains a caption task, and this checkpoint "
                              f"has none (its tasks: {', '.join(model.routes)})")
        return model

    def objective(self, model, examples: list[dict], output_dir: Path) -> nn.Module:
        return SelfCriticalObjective(model, self.config.scst, examples, output_dir)

    def record(self) -> dict:
        # Set on the model as it starts, so that its copies (a weight average) keep it too.
        return {"scst": record(self.config.scst)}
