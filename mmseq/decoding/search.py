"""Greedy, beam and sampling search over any encoder's memory, batched over inputs and beams.

The search is a loop over small parts: the decoder's cached ``step``, the logit filters
(:mod:`mmseq.decoding.filters`: suppressed tokens, timestamp rules, minimum length, bad endings,
no-repeat n-grams, a length limit per input), the scorers fused with the decoder
(:mod:`mmseq.decoding.scorers`: ``(scorer, weight)`` pairs; nothing here names one) and the beam
bookkeeping. All three searches share one start (:func:`_start`). Inside a step everything is
tensor operations over ``inputs x beam`` rows; the only host synchronisation is one count per
step of the inputs that are done (their rows then leave the batch). Fused scorers that keep host
state say so in their docstrings.

Scores. Each step adds ``(1 - joint weights) * log p_attention`` and the weighted gains of the
fused scorers (ESPnet's weighting: ``ctc_weight`` for CTC, ``lm_weight`` for a language model); a
finished hypothesis of ``length`` new tokens (``</s>`` included, prompt not counted) ranks by
``(total + length_bonus * length) / length ** length_penalty``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError, InputError
from .filters import LengthLimit, LogitFilter, Step, apply_filters, build_filters
from .options import DecodingOptions, Hypothesis
from .scorers.fusion import fused_scorers

NEG_INF = float("-inf")


def final_score(total, length, options: DecodingOptions):
    """Ranking score of hypotheses with summed step scores ``total`` and ``length`` new tokens."""
    return (total + options.length_bonus * length) / length ** options.length_penalty


# -- the start every search shares -----------------------------------------------------------------
def _limits(memory_mask: torch.Tensor, options: DecodingOptions, room: int) -> torch.Tensor:
    """Most new tokens for each input ``(batch,)``, ``</s>`` included; ``room``: positions left in
    the decoder (and language model) after the prompt."""
    if room < 1:
        raise InputError("the prompt leaves no room for output in the decoder's max_length")
    limit = torch.full(memory_mask.shape[:1], min(options.max_length, room), device=memory_mask.device)
    if options.max_length_ratio is not None:
        by_input = (memory_mask.sum(1).float() * options.max_length_ratio).ceil().long() + 1
        limit = torch.minimum(limit, by_input)
    return limit.clamp(min=min(room, max(1, options.min_length + 1)))


def _prefix(model, prompt, device) -> torch.Tensor:
    return torch.tensor([model.tokenizer.bos_id] + list(prompt), device=device)


def _prefixes(model, prompt, context, batch: int, device):
    """The forced start of every input ``(batch, length)``: its context segment (``context``: ids
    per input, the ``<|context|>`` marker included, or None), ``<s>`` and ``prompt``; inputs with
    shorter prefixes are left-padded and ``offsets (batch,)`` counts their padding (None: none)."""
    prefix = _prefix(model, prompt, device)
    if not context or not any(context):
        return prefix.expand(batch, -1), None
    if len(context) != batch:
        raise InputError(f"{len(context)} contexts for {batch} inputs")
    rows = [list(c or []) + prefix.tolist() for c in context]
    longest = max(map(len, rows))
    tokens = torch.full((batch, longest), model.tokenizer.pad_id, dtype=torch.long, device=device)
    offsets = torch.tensor([longest - len(row) for row in rows], device=device)
    for i, row in enumerate(rows):
        tokens[i, longest - len(row):] = torch.tensor(row, device=device)
    return tokens, offsets if bool(offsets.any()) else None


def _visible(model, prompt) -> list[int]:
    """The prompt a hypothesis continues (``Hypothesis.prompt``): soft prompt vectors left out."""
    return [i for i in prompt if i < model.tokenizer.vocab_size]


def _room(model, prefixes: torch.Tensor, prompt, scorers=()) -> int:
    """Positions left for new tokens in the decoder (and the fused scorers) after the prefixes."""
    room = model.decoder.config.max_length - prefixes.shape[-1]
    for scorer, _ in scorers:
        limit = scorer.room(list(prompt))
        room = room if limit is None else min(room, limit)
    return room



@dataclass
class _Start:
    """What a search starts from: the decoder's cache and logits after the forced prefixes
    (``copies`` rows per input), each input's length limit, and the logit filters."""
    cache: object
    logits: torch.Tensor  # (rows, vocab)
    limits: torch.Tensor  # (batch,) most new tokens of each input, </s> included
    max_new: int
    filters: list[LogitFilter]
    ending: LengthLimit  # the last filter, applied after the fused scorers
    prompt: list[int]  # the prompt the hypotheses continue (Hypothesis.prompt)

    def log_probs(self, logits: torch.Tensor, step: Step, fusion: "_Fused | None" = None) -> torch.Tensor:
        """The step's scores ``(rows, vocab)``: the filtered log-probabilities of ``logits``,
        weighted and fused with the whole-vocabulary scorers of ``fusion``, at the length limit
        only ``</s>``."""
        log_probs = apply_filters(self.filters, logits.float().log_softmax(-1), step)
        if fusion is not None:
            log_probs = fusion.full(log_probs, step.tokens)
        return self.ending.apply(log_probs, step)


def _start(model, memory, memory_mask, prompt, options: DecodingOptions, context=None, copies: int = 1,
           scorers=()) -> _Start:
    """The cache with the cross-attention keys and values of each input (computed once, shared by
    its ``copies`` rows), the decoder's logits after the forced prefixes (see :func:`_prefixes`),
    the length limits (within the room that the decoder and ``scorers`` leave) and the filters."""
    prefixes, offsets = _prefixes(model, prompt, context, memory.shape[0], memory.device)
    shown = _visible(model, prompt)
    limits = _limits(memory_mask, options, _room(model, prefixes, shown, scorers))
    max_new = int(limits.max())
    cache = model.decoder.init_cache(memory, memory_mask, prefixes.shape[1] + max_new, offsets=offsets)
    logits = model.decoder.step(prefixes, cache)[:, -1]
    if copies > 1:
        cache, logits = cache.share(copies), logits.repeat_interleave(copies, 0)
    filters = build_filters(model.tokenizer, options, logits.shape[-1], memory.device)
    return _Start(cache, logits, limits, max_new, filters, LengthLimit(model.tokenizer.eos_id, int(limits.min())),
                  shown)


class _Fused:
    """The scorers fused with the decoder in one search (see :class:`mmseq.decoding.scorers.Scorer`) and
    their states: those that score the whole vocabulary, then those that score each row's best
    candidates (``candidates_per_row`` of them)."""

    def __init__(self, pairs, prompt: list[int], memory_mask, rows_per_input: int, max_new: int,
                 candidates_per_row: int):
        self.pairs = list(pairs)
        self.states = [scorer.init_state(prompt, memory_mask, rows_per_input, max_new) for scorer, _ in self.pairs]
        self.attention_weight = 1.0 - sum(weight for scorer, weight in self.pairs if scorer.joint)
        if self.attention_weight <= 0:
            raise ConfigError("the weights of the joint scorers (ctc_weight) must add up to less than 1")
        self.partial = any(scorer.partial for scorer, _ in self.pairs)
        self.candidates_per_row = candidates_per_row

    def full(self, log_probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The decoder's ``log_probs (rows, vocab)`` weighted, plus the weighted whole-vocabulary scorers."""
        if self.attention_weight != 1.0:
            log_probs = log_probs * self.attention_weight
        for (scorer, weight), state in zip(self.pairs, self.states):
            if not scorer.partial:
                log_probs = scorer.add_scores(log_probs, state, tokens, weight)
        return log_probs

    def candidates(self, log_probs: torch.Tensor, tokens: torch.Tensor, eos: int):
        """``(step_scores, candidates)``: without candidate scorers, ``log_probs`` over the whole
        vocabulary (and None); else each row's best ``candidates_per_row`` tokens ``(rows, count)``
        and their scores plus the weighted gains of the candidate scorers (CTC), all rows at once.
        ``</s>`` is always a candidate, so a hypothesis that CTC cannot extend can still end."""
        if not self.partial:
            return log_probs, None
        others = log_probs.clone()
        others[:, eos] = NEG_INF
        best = others.topk(self.candidates_per_row - 1, -1).indices
        candidates = torch.cat([best, torch.full_like(log_probs[:, :1], eos, dtype=torch.long)], 1)
        step_scores = log_probs.gather(1, candidates)
        # In a row with fewer finite scores than candidates (e.g. at its length limit, where only
        # ``</s>`` is allowed), topk may pick ``</s>`` among the ties at -inf: gathered from
        # ``log_probs`` it would score like the real ``</s>``, and the pool would take the same
        # hypothesis twice. That copy stays impossible.
        step_scores[:, :-1] = step_scores[:, :-1].masked_fill(best == eos, NEG_INF)
        total = torch.zeros(candidates.shape, device=candidates.device)
        for (scorer, weight), state in zip(self.pairs, self.states):
            if scorer.partial:
                total = total + weight * scorer.score(state, tokens, candidates).float()
        return step_scores + total, candidates

    def advance(self, index: torch.Tensor, new_tokens: torch.Tensor) -> None:
        self.states = [scorer.advance(state, index, new_tokens) for (scorer, _), state in zip(self.pairs, self.states)]

    def select(self, rows: torch.Tensor) -> None:
        self.states = [scorer.select(state, rows) for (scorer, _), state in zip(self.pairs, self.states)]


class _Pool:
    """Each input's finished hypotheses (``beam`` at most, best first): ranking scores, totals and
    tokens ``(batch, beam, max_new)`` padded with ``</s>``."""

    def __init__(self, batch: int, beam: int, max_new: int, eos: int, device):
        self.beam, self.max_new, self.eos = beam, max_new, eos
        self.scores = torch.full((batch, beam), NEG_INF, device=device)
        self.totals = torch.zeros(batch, beam, device=device)
        self.tokens = torch.full((batch, beam, max_new), eos, dtype=torch.long, device=device)

    def add(self, alive, top_scores, top_token, source, tokens, options: DecodingOptions) -> torch.Tensor:
        """Hypotheses that end among the best ``beam`` candidates join the pool, as in fairseq;
        returns the pools' ranking scores ``(inputs, beam)`` of the inputs ``alive``."""
        beam, (inputs, step) = self.beam, (alive.shape[0], tokens.shape[1])
        length = step + 1
        ending = (top_token[:, :beam] == self.eos) & (top_scores[:, :beam] > NEG_INF)
        ended_scores = final_score(top_scores[:, :beam], length, options).masked_fill(~ending, NEG_INF)
        ended_tokens = torch.cat([tokens[source[:, :beam].reshape(-1)].view(inputs, beam, step),
                                  top_token[:, :beam, None]], -1)
        ended_tokens = torch.nn.functional.pad(ended_tokens, (0, self.max_new - length), value=self.eos)
        merged_scores, keep = torch.cat([self.scores[alive], ended_scores], 1).topk(beam, -1)
        self.scores[alive] = merged_scores
        self.totals[alive] = torch.cat([self.totals[alive], top_scores[:, :beam]], 1).gather(1, keep)
        self.tokens[alive] = torch.cat([self.tokens[alive], ended_tokens], 1).gather(
            1, keep[..., None].expand(-1, -1, self.max_new))
        return merged_scores

    def hypotheses(self, nbest: int, prompt: list[int]) -> list[list[Hypothesis]]:
        results = []
        for scores_row, totals_row, tokens_row in zip(self.scores.tolist(), self.totals.tolist(), self.tokens.tolist()):
            hyps = [Hypothesis(row[: row.index(self.eos)], score, total, prompt)
                    for score, total, row in zip(scores_row, totals_row, tokens_row) if score > NEG_INF]
            # An input whose every continuation was impossible (e.g. CTC cannot align it) ends empty.
            results.append(hyps[:nbest] or [Hypothesis([], NEG_INF, NEG_INF, prompt)])
        return results


# -- greedy ----------------------------------------------------------------------------------------
@torch.no_grad()
def greedy_search(model, memory, memory_mask, prompt: list[int] = (), options: DecodingOptions | None = None,
                  context: list[list[int]] | None = None):
    """Most likely token at each step, for every input at once; inputs that end leave the batch.

    ``memory (batch, frames, dim)``, ``memory_mask (batch, frames)``, ``prompt``: ids forced after
    ``<s>``; ``context``: each input's context segment, forced before ``<s>`` (see
    :func:`_prefixes`). Returns one :class:`Hypothesis` per input.
    """
    options = (options or DecodingOptions()).check()
    start = _start(model, memory, memory_mask, prompt, options, context)
    eos, device, batch = model.tokenizer.eos_id, memory.device, memory.shape[0]
    cache, logits = start.cache, start.logits
    out = torch.full((batch, start.max_new), eos, dtype=torch.long, device=device)
    totals = torch.zeros(batch, device=device)
    alive = torch.arange(batch, device=device)
    tokens = out[:, :0]
    for index in range(start.max_new):
        best, token = start.log_probs(logits, Step(index, tokens, start.limits[alive])).max(-1)
        totals[alive] += best
        out[alive, index] = token
        tokens = torch.cat([tokens, token[:, None]], 1)
        done = token == eos
        finished = int(done.sum())  # the step's one host synchronisation
        if finished == len(alive):
            break
        if finished:
            keep = (~done).nonzero().squeeze(1)
            alive, tokens, token, cache = alive[keep], tokens[keep], token[keep], cache.select(keep)
        logits = model.decoder.step(token[:, None], cache)[:, -1]
    return [_hypothesis(row, total, eos, options, start.prompt) for row, total in zip(out.tolist(), totals.tolist())]


def _hypothesis(row: list[int], total: float, eos: int, options: DecodingOptions, prompt: list[int]) -> Hypothesis:
    length = row.index(eos) + 1 if eos in row else len(row)
    return Hypothesis(row[: length - (eos in row)], final_score(total, length, options), total, prompt)


# -- beam -------------------------------------------------------------------------------------------
@torch.no_grad()
def beam_search(model, memory, memory_mask, prompt: list[int] = (), options: DecodingOptions | None = None,
                ctc_log_probs: torch.Tensor | None = None, lm=None, scorers=(),
                context: list[list[int]] | None = None) -> list[list[Hypothesis]]:
    """Beam search over ``inputs x beam`` rows at once; returns up to ``options.nbest``
    hypotheses per input, best first, each with its score.

    Args:
        model: anything with ``tokenizer`` and ``decoder`` (:class:`~mmseq.decoder.TextDecoder`).
        memory: ``(batch, frames, dim)`` encoder output; memory_mask: ``(batch, frames)``, True on
            real frames.
        prompt: ids forced after ``<s>`` (task token, control tokens, a text prefix); not scored.
        context: each input's context segment (``<|context|>`` and its ids), forced before ``<s>``
            and never scored; inputs of shorter prefixes are left-padded (see :func:`_prefixes`).
        ctc_log_probs, lm: shorthands for ``scorers``: the CTC head's output ``(batch, frames,
            vocab)`` for joint CTC/attention decoding with weight ``options.ctc_weight``, and a
            language model scorer fused with weight ``options.lm_weight``
            (:func:`mmseq.decoding.scorers.fusion.fused_scorers` makes them pairs).
        scorers: ``(scorer, weight)`` pairs to fuse (:class:`mmseq.decoding.scorers.Scorer`). A scorer
            that scores candidates only (CTC) sees each row's best ``ctc_candidates * beam``
            tokens by the other scores, ``</s>`` always among them.

    The cross-attention keys and values are computed once per input; each step reorders the
    self-attention cache with one index operation. A hypothesis that ends among the best ``beam``
    candidates goes to its input's pool of finished ones (``beam`` at most) and the beam refills
    from the other candidates, so no row idles. An input is done, and its rows leave the batch,
    at its length limit or when no live hypothesis can beat its finished ones:

    * always, when none can reach its ``nbest``-th finished score at any length still allowed
      (step scores are log-probabilities, so this bound is exact; a fused scorer whose gains can
      be positive, the context boost, makes it a heuristic too);
    * with ``early_stopping="heuristic"`` (the default, Hugging Face's rule), also once the pool
      is full and the best live hypothesis, scored at its current length, does not beat the
      worst finished one. With ``length_penalty > 0`` the exact bound alone rarely stops before
      the length limit; ``"exact"`` pays that for a search that never drops a possible winner.

    With ``beam_size=1`` this is greedy search (as fused with CTC or an LM).
    """
    options = (options or DecodingOptions()).check()
    beam, eos, device = options.beam_size, model.tokenizer.eos_id, memory.device
    batch = memory.shape[0]
    pairs = fused_scorers(model.tokenizer, options, ctc_log_probs, lm, scorers)
    start = _start(model, memory, memory_mask, prompt, options, context, beam, pairs)
    cache, logits, limits, max_new = start.cache, start.logits, start.limits, start.max_new
    candidates_per_row = min(logits.shape[-1], max(2, math.ceil(options.ctc_candidates * beam)))
    fusion = _Fused(pairs, start.prompt, memory_mask, beam, max_new, candidates_per_row)
    lengths = torch.arange(1, max_new + 1, device=device, dtype=torch.float)
    heuristic = options.early_stopping == "heuristic"
    # Live beams of the inputs still running; ``alive`` maps them back to input numbers.
    alive = torch.arange(batch, device=device)
    scores = torch.zeros(batch, beam, device=device)
    scores[:, 1:] = NEG_INF  # all beams start equal: expand only the first
    tokens = torch.zeros(batch * beam, 0, dtype=torch.long, device=device)
    pool = _Pool(batch, beam, max_new, eos, device)
    for step in range(max_new):
        inputs = alive.shape[0]
        log_probs = start.log_probs(logits, Step(step, tokens, limits[alive].repeat_interleave(beam)), fusion)
        step_scores, candidates = fusion.candidates(log_probs, tokens, eos)
        width = step_scores.shape[-1]
        totals = (scores.view(-1, 1) + step_scores).view(inputs, beam * width)
        top_scores, top_index = totals.topk(min(2 * beam, beam * width), -1)  # >= beam of them go on
        top_beam, top_position = top_index // width, top_index % width
        source = torch.arange(inputs, device=device)[:, None] * beam + top_beam  # (inputs, 2 beam) rows
        top_token = top_position if candidates is None else candidates[source, top_position]
        merged_scores = pool.add(alive, top_scores, top_token, source, tokens, options)

        # The best ``beam`` candidates that did not end go on.
        scores, live = top_scores.masked_fill(top_token == eos, NEG_INF).topk(beam, -1)
        index = source.gather(1, live).view(-1)
        new_tokens = top_token.gather(1, live).view(-1)
        tokens = torch.cat([tokens[index], new_tokens[:, None]], 1)
        cache.reorder(index)
        fusion.advance(index, new_tokens)

        # Done when no live hypothesis can beat the finished ones. Step scores are log-probabilities
        # (<= 0), so the best a live beam can reach is its total now at the most favourable length
        # still allowed.
        length, limit = step + 1, limits[alive]
        later = (lengths[None] > length) & (lengths[None] <= limit[:, None].float())
        reachable = final_score(scores[:, :1], lengths[None], options).masked_fill(~later, NEG_INF).amax(1)
        done = (merged_scores[:, options.nbest - 1] >= reachable) | (scores[:, 0] == NEG_INF) | (length >= limit)
        if heuristic:
            done |= (merged_scores[:, -1] > NEG_INF) & (merged_scores[:, -1] >= final_score(scores[:, 0], length,
                                                                                               options))
        finished = int(done.sum())  # the step's one host synchronisation
        if finished == inputs:
            break
        if finished:
            keep_inputs = (~done).nonzero().squeeze(1)
            rows = (keep_inputs[:, None] * beam + torch.arange(beam, device=device)).view(-1)
            alive, scores, tokens, new_tokens = alive[keep_inputs], scores[keep_inputs], tokens[rows], new_tokens[rows]
            cache = cache.select(rows)
            fusion.select(rows)
        logits = model.decoder.step(new_tokens[:, None], cache)[:, -1]
    return pool.hypotheses(options.nbest, start.prompt)


# -- sampling ---------------------------------------------------------------------------------------
@torch.no_grad()
def sample(model, memory, memory_mask, prompt: list[int] = (), options: DecodingOptions | None = None,
           count: int = 1) -> torch.Tensor:
    """``count`` sampled continuations per input (temperature, top-k), for SCST.

    Returns new token ids ``(batch * count, steps)``, rows of one input next to each other, padded
    with ``</s>`` after the end.
    """
    options = (options or DecodingOptions()).check()
    eos = model.tokenizer.eos_id
    start = _start(model, memory, memory_mask, prompt, options, copies=count)
    cache, logits, limits = start.cache, start.logits, start.limits.repeat_interleave(count)
    tokens = torch.zeros(logits.shape[0], 0, dtype=torch.long, device=memory.device)
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=memory.device)
    for step in range(start.max_new):
        log_probs = start.log_probs(logits.float() / options.temperature, Step(step, tokens, limits))
        if options.top_k:
            kth = log_probs.topk(options.top_k, -1).values[:, -1:]
            log_probs = log_probs.masked_fill(log_probs < kth, NEG_INF)
        token = torch.multinomial(log_probs.softmax(-1), 1).squeeze(1).masked_fill(done, eos)
        tokens = torch.cat([tokens, token[:, None]], 1)
        done |= token == eos
        if bool(done.all()):
            break
        logits = model.decoder.step(token[:, None], cache)[:, -1]
    return tokens
