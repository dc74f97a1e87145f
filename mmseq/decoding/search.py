"""Greedy, beam and sampling search over any encoder's memory, batched over inputs and beams.

The search is a loop over small parts: the decoder's cached ``step``, logit filters (minimum
length, no-repeat n-grams, bad endings, a length limit per input), optional scorers fused with the
decoder (a CTC prefix scorer, an external language model), and the beam bookkeeping. Inside a step
everything is tensor operations over ``inputs x beam`` rows; the only host synchronisation is one
count per step of the inputs that are done (their rows then leave the batch).

Scores. Each step adds ``(1 - ctc_weight) * log p_attention + ctc_weight * CTC prefix gain +
lm_weight * log p_lm`` (ESPnet's weighting), and the weighted gains of any other fused scorer
(:mod:`mmseq.decoding.scorers`: one class each, nothing here names them); a finished hypothesis of ``length`` new tokens
(``</s>`` included, prompt not counted) ranks by ``(total + length_bonus * length) /
length ** length_penalty``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .scorers.ctc import CTCScorer
from ..errors import ConfigError, InputError

NEG_INF = float("-inf")


@dataclass
class DecodingOptions:
    beam_size: int = 1  # hypotheses kept per input (1 without CTC or LM: greedy search)
    max_length: int = 200  # most new tokens (prompt not counted)
    max_length_ratio: float | None = None  # most new tokens per memory frame, e.g. 1.0 for speech
    min_length: int = 0  # fewest new tokens before ``</s>`` is allowed
    length_penalty: float = 1.0  # length normalisation: score = total / length ** length_penalty (0: none)
    length_bonus: float = 0.0  # added per new token before normalising (ESPnet's "penalty"); > 0 favours long outputs
    nbest: int = 1  # hypotheses returned per input (at most beam_size)
    early_stopping: str = "heuristic"  # when an input stops: "heuristic" or "exact" (see beam_search)
    ctc_weight: float = 0.0  # joint CTC/attention decoding (speech models with a CTC head)
    ctc_candidates: float = 1.5  # the fused score's best ``ctc_candidates * beam`` tokens get CTC scores
    lm_weight: float = 0.0  # shallow fusion with an external language model (``generate(lm=...)``)
    no_repeat_ngram: int = 0  # forbid repeating any n-gram of this size (0: off)
    bad_endings: list[int | str] = field(default_factory=list)  # words ("a", "the") or token ids that may not precede ``</s>``
    temperature: float = 1.0  # sampling only
    top_k: int = 0  # sampling only (0: whole vocabulary)
    suppress_tokens: list[int] = field(default_factory=list)  # ids never generated (Whisper's non-speech symbols)
    suppress_at_start: list[int] = field(default_factory=list)  # ids never generated first (Whisper's blank and </s>)
    timestamp_tokens: bool = False  # generate the tokenizer's timestamp tokens, by their rules (see _TimestampRules)
    max_initial_timestamp: float | None = None  # with timestamp_tokens: the latest first timestamp, in seconds

    def check(self) -> "DecodingOptions":
        """Raise :class:`ConfigError` on settings that cannot work; returns itself."""
        from ..checks import check_decoding

        check_decoding(self)  # types and ranges of every field (mmseq/checks.py: DECODING)
        if self.beam_size < 1:
            raise ConfigError(f"decoding.beam_size must be at least 1, got {self.beam_size}")
        if not 1 <= self.nbest <= self.beam_size:
            raise ConfigError(f"decoding.nbest must be between 1 and beam_size ({self.beam_size}), got {self.nbest}")
        if self.max_length < 1:
            raise ConfigError(f"decoding.max_length must be at least 1, got {self.max_length}")
        if not 0.0 <= self.ctc_weight < 1.0:  # the decoder proposes the candidates CTC scores
            raise ConfigError(f"decoding.ctc_weight must be at least 0 and below 1, got {self.ctc_weight}")
        if self.lm_weight < 0 or self.length_penalty < 0:
            raise ConfigError("decoding.lm_weight and decoding.length_penalty must not be negative")
        if self.early_stopping not in ("heuristic", "exact"):
            raise ConfigError(f"decoding.early_stopping must be 'heuristic' or 'exact', got {self.early_stopping!r}")
        if self.temperature <= 0:
            raise ConfigError(f"decoding.temperature must be positive, got {self.temperature}")
        return self


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, prompt and ``</s>`` excluded
    score: float  # (log_prob + length_bonus * length) / length ** length_penalty
    log_prob: float  # summed step scores of the generated tokens and ``</s>`` (prompt not counted)
    prompt: list[int] = field(default_factory=list)  # the forced prompt ids the output continues

    @property
    def output(self) -> list[int]:
        """The forced prompt followed by the generated ids: decode this for the full text (the
        tokenizer drops task and control tokens, so a forced text prefix starts the text)."""
        return self.prompt + self.tokens


def final_score(total, length, options: DecodingOptions):
    """Ranking score of hypotheses with summed step scores ``total`` and ``length`` new tokens."""
    return (total + options.length_bonus * length) / length ** options.length_penalty


# -- the parts of a step ------------------------------------------------------------------------
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


def _bad_endings(tokenizer, endings, device) -> list[tuple[torch.Tensor, bool]]:
    """``DecodingOptions.bad_endings`` as token patterns ``(ids, whole)`` after which ``</s>`` is
    banned: an id stands for itself; a word for the tokens of ``" " + word`` (so that with a
    character tokenizer "the" does not also ban "bathe") and, when they make up the whole output,
    the tokens of ``word``."""
    patterns = []
    for ending in endings:
        if isinstance(ending, str):
            patterns.append((tokenizer.encode(" " + ending), False))
            patterns.append((tokenizer.encode(ending), True))
        else:
            patterns.append(([int(ending)], False))
    return [(torch.tensor(ids, dtype=torch.long, device=device), whole) for ids, whole in patterns if ids]


def _filter(log_probs, steps: int, limits, tokens, options: DecodingOptions, eos: int, bad_endings=(),
            shortest: int = 0):
    """Apply the logit filters in place to ``log_probs (rows, vocab)`` before choosing a token.

    ``steps``: tokens generated so far; ``limits (rows,)``; ``tokens (rows, steps)`` so far;
    ``bad_endings``: patterns from :func:`_bad_endings` that may not precede ``</s>``;
    ``shortest``: no row's limit is below it (the caller's bound, so that the steps before any row
    can reach its limit skip that check).
    """
    if steps < options.min_length:
        log_probs[:, eos] = NEG_INF
    for pattern, whole in bad_endings:
        if steps == len(pattern) or (steps > len(pattern) and not whole):
            bad = (tokens[:, steps - len(pattern):] == pattern).all(1)
            log_probs[:, eos] = log_probs[:, eos].masked_fill(bad, NEG_INF)
    n = options.no_repeat_ngram
    if n and steps >= n:
        # Every (n-1)-gram seen so far, with the token that followed it: ban that token now.
        windows = tokens.unfold(1, n, 1)  # (rows, count, n)
        same = (windows[:, :, :-1] == tokens[:, None, steps - n + 1:]).all(-1)  # (rows, count)
        banned = torch.zeros_like(log_probs, dtype=torch.bool)
        banned.scatter_(1, windows[:, :, -1].masked_fill(~same, eos), same)
        banned[:, eos] = False
        log_probs.masked_fill_(banned, NEG_INF)
    # At its length limit a row must end: ``</s>`` is appended at no cost (as ESPnet does), so a
    # cut-off hypothesis is scored by what it generated.
    if steps + 1 < shortest:
        return log_probs
    at_limit = (steps + 1 >= limits)[:, None]
    ended = torch.full_like(log_probs[:1], NEG_INF)
    ended[:, eos] = 0.0
    log_probs.copy_(torch.where(at_limit, ended, log_probs))
    return log_probs


class _Suppress:
    """Tokens never generated: the tokenizer's special and prompt tokens (``</s>`` is the only one
    allowed) and ``options.suppress_tokens``; at the first step also ``options.suppress_at_start``.
    One in-place add of a mask made once per search."""

    def __init__(self, tokenizer, options: DecodingOptions, vocab: int, device):
        self.mask = torch.zeros(vocab, device=device)
        specials = tokenizer.special_ids
        self.mask[specials.start:specials.stop] = NEG_INF
        self.mask[tokenizer.eos_id] = 0.0
        if options.timestamp_tokens and getattr(tokenizer, "timestamp_begin", None) is not None:
            self.mask[tokenizer.timestamp_begin:] = 0.0  # generated under _TimestampRules
        self.mask[[i for i in options.suppress_tokens if 0 <= i < vocab]] = NEG_INF
        self.first = self.mask.clone()
        self.first[[i for i in options.suppress_at_start if 0 <= i < vocab]] = NEG_INF

    def apply(self, log_probs: torch.Tensor, step: int) -> torch.Tensor:
        return log_probs.add_(self.first if step == 0 else self.mask)


class _TimestampRules:
    """Timestamp tokens (``options.timestamp_tokens``: the tokenizer's ids from ``timestamp_begin``
    on, one every ``timestamp_step`` seconds) by openai-whisper's rules, as its
    ``ApplyTimestampRules`` and transformers' ``WhisperTimeStampLogitsProcessor`` apply them: the
    output opens with a time (at most ``options.max_initial_timestamp`` seconds); text is followed
    by a time only to close a segment, and a closing time by the next segment's opening time or by
    ``</s>``; times never go back (an opening time may repeat the closing one before it); and a time
    is forced when all times together are likelier than any one other token.

    Applied after :class:`_Suppress`, in place, to every row at once from the tokens so far
    ``tokens (rows, steps)``; a beam's reordering needs no state here. Off, it does nothing."""

    def __init__(self, tokenizer, options: DecodingOptions, vocab: int, device):
        self.begin = None
        if not options.timestamp_tokens:
            return
        self.begin = getattr(tokenizer, "timestamp_begin", None)
        if self.begin is None:
            raise ConfigError("decoding.timestamp_tokens: the tokenizer has no timestamp tokens")
        initial = options.max_initial_timestamp
        if initial is not None and not 0 <= initial < math.inf:
            raise ConfigError(f"decoding.max_initial_timestamp must be seconds (0 or more) or null, got {initial}")
        self.last_initial = None if initial is None else self.begin + round(initial / tokenizer.timestamp_step)
        self.eos = tokenizer.eos_id
        self.times = torch.arange(self.begin, vocab, device=device)

    def apply(self, log_probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if self.begin is None:
            return log_probs
        text, times = log_probs[:, :self.begin], log_probs[:, self.begin:]
        if tokens.shape[1] == 0:
            text.fill_(NEG_INF)
            if self.last_initial is not None:
                log_probs[:, self.last_initial + 1:] = NEG_INF
            return log_probs
        is_time = tokens >= self.begin
        last = is_time[:, -1]
        before = is_time[:, -2] if tokens.shape[1] > 1 else torch.ones_like(last)
        times.masked_fill_((last & before)[:, None], NEG_INF)  # after a pair (or the opening time): text
        log_probs[:, :self.eos].masked_fill_((last & ~before)[:, None], NEG_INF)  # a closing time: a time or </s>
        latest = tokens.masked_fill(~is_time, self.begin - 1).amax(1)  # times never go back: the latest is the last
        lowest = torch.where(last & ~before, latest, latest + 1)
        times.masked_fill_(self.times[None] < lowest[:, None], NEG_INF)
        normalized = log_probs.log_softmax(-1)
        forced = normalized[:, self.begin:].logsumexp(-1) > normalized[:, :self.begin].amax(-1)
        text.masked_fill_(forced[:, None], NEG_INF)
        return log_probs


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


def _start(model, memory, memory_mask, prefixes: torch.Tensor, offsets, max_new: int):
    """Cache with the cross-attention keys and values of each input (computed once) and the
    decoder's logits after the forced prefixes ``(batch, vocab)``."""
    size = prefixes.shape[1] + max_new
    # (a decoder without left padding, such as a test's stand-in, needs no offsets argument)
    cache = model.decoder.init_cache(memory, memory_mask, size, **({} if offsets is None else {"offsets": offsets}))
    logits = model.decoder.step(prefixes, cache)[:, -1]
    return cache, logits


def _visible(model, prompt) -> list[int]:
    """The prompt a hypothesis continues (``Hypothesis.prompt``): soft prompt vectors left out."""
    return [i for i in prompt if i < model.tokenizer.vocab_size]


def _share(cache, times: int):
    """Each row ``times`` times, the cross-attention kept once per input when the cache can
    (:meth:`~mmseq.decoder.DecoderCache.share`); a cache with only ``repeat`` copies it."""
    return cache.share(times) if hasattr(cache, "share") else cache.repeat(times)


def _room(model, prefixes: torch.Tensor, prompt, scorers=()) -> int:
    """Positions left for new tokens in the decoder (and the fused scorers) after the prefixes."""
    room = model.decoder.config.max_length - prefixes.shape[-1]
    for scorer, _ in scorers:
        limit = scorer.room(list(prompt))
        room = room if limit is None else min(room, limit)
    return room


def fused_scorers(model, options: DecodingOptions, ctc_log_probs=None, lm=None, scorers=()) -> list:
    """``(scorer, weight)`` pairs of a search: CTC prefix scores of ``ctc_log_probs`` with
    ``options.ctc_weight``, the language model ``lm`` with ``options.lm_weight``, then ``scorers``
    (pairs given by the caller); those of weight 0 are left out."""
    pairs = []
    if ctc_log_probs is not None and options.ctc_weight > 0:
        pairs.append((CTCScorer(ctc_log_probs, model.tokenizer), options.ctc_weight))
    if lm is not None and options.lm_weight > 0:
        pairs.append((lm, options.lm_weight))
    return pairs + [(scorer, float(weight)) for scorer, weight in scorers if weight]


class _Fused:
    """The scorers fused with the decoder in one search (see :class:`mmseq.decoding.scorers.Scorer`) and
    their states: those that score the whole vocabulary, then those that score each row's best
    candidates."""

    def __init__(self, pairs, prompt: list[int], memory_mask, rows_per_input: int, max_new: int):
        self.pairs = list(pairs)
        self.states = [scorer.init_state(prompt, memory_mask, rows_per_input, max_new) for scorer, _ in self.pairs]
        self.attention_weight = 1.0 - sum(weight for scorer, weight in self.pairs if scorer.joint)
        if self.attention_weight <= 0:
            raise ConfigError("the weights of the joint scorers (ctc_weight) must add up to less than 1")
        self.partial = any(scorer.partial for scorer, _ in self.pairs)

    def full(self, log_probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The decoder's ``log_probs (rows, vocab)`` weighted, plus the weighted whole-vocabulary scorers."""
        if self.attention_weight != 1.0:
            log_probs = log_probs * self.attention_weight
        for (scorer, weight), state in zip(self.pairs, self.states):
            if not scorer.partial:
                log_probs = log_probs + weight * scorer.score(state, tokens, None).float()
        return log_probs

    def candidates(self, tokens: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Weighted sum ``(rows, count)`` of the candidate scorers' gains for ``candidates``."""
        total = torch.zeros(candidates.shape, device=candidates.device)
        for (scorer, weight), state in zip(self.pairs, self.states):
            if scorer.partial:
                total = total + weight * scorer.score(state, tokens, candidates).float()
        return total

    def advance(self, index: torch.Tensor, new_tokens: torch.Tensor) -> None:
        self.states = [scorer.advance(state, index, new_tokens) for (scorer, _), state in zip(self.pairs, self.states)]

    def select(self, rows: torch.Tensor) -> None:
        self.states = [scorer.select(state, rows) for (scorer, _), state in zip(self.pairs, self.states)]


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
    eos, device = model.tokenizer.eos_id, memory.device
    batch = memory.shape[0]
    prefixes, offsets = _prefixes(model, prompt, context, batch, device)
    limits = _limits(memory_mask, options, _room(model, prefixes, prompt))
    max_new = int(limits.max())
    bad_endings = _bad_endings(model.tokenizer, options.bad_endings, device)
    cache, logits = _start(model, memory, memory_mask, prefixes, offsets, max_new)
    suppress = _Suppress(model.tokenizer, options, logits.shape[-1], device)
    timestamps = _TimestampRules(model.tokenizer, options, logits.shape[-1], device)
    out = torch.full((batch, max_new), eos, dtype=torch.long, device=device)
    totals = torch.zeros(batch, device=device)
    alive = torch.arange(batch, device=device)
    shortest = int(limits.min())
    tokens = out[:, :0]
    for step in range(max_new):
        log_probs = timestamps.apply(suppress.apply(logits.float().log_softmax(-1), step), tokens)
        log_probs = _filter(log_probs, step, limits[alive], tokens, options, eos, bad_endings, shortest)
        best, token = log_probs.max(-1)
        totals[alive] += best
        out[alive, step] = token
        tokens = torch.cat([tokens, token[:, None]], 1)
        done = token == eos
        finished = int(done.sum())  # the step's one host synchronisation
        if finished == len(alive):
            break
        if finished:
            keep = (~done).nonzero().squeeze(1)
            alive, tokens, token, cache = alive[keep], tokens[keep], token[keep], cache.select(keep)
        logits = model.decoder.step(token[:, None], cache)[:, -1]
    shown = _visible(model, prompt)
    return [_hypothesis(row, total, eos, options, shown) for row, total in zip(out.tolist(), totals.tolist())]


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
        ctc_log_probs: ``(batch, frames, vocab)`` the CTC head's output, for joint CTC/attention
            decoding with weight ``options.ctc_weight``.
        lm: a language model scorer (see :class:`mmseq.decoding.scorers.LanguageModel`) fused with weight
            ``options.lm_weight``.
        scorers: more ``(scorer, weight)`` pairs to fuse (:class:`mmseq.decoding.scorers.Scorer`). A scorer
            that scores candidates only (CTC) sees each row's best ``ctc_candidates * beam``
            tokens by the other scores, ``</s>`` always among them.

    The cross-attention keys and values are computed once per input; each step reorders the
    self-attention cache with one index operation. A hypothesis that ends among the best ``beam``
    candidates goes to its input's pool of finished ones (``beam`` at most) and the beam refills
    from the other candidates, so no row idles. An input is done, and its rows leave the batch,
    at its length limit or when no live hypothesis can beat its finished ones:

    * always, when none can reach its ``nbest``-th finished score at any length still allowed
      (step scores are log-probabilities, so this bound is exact);
    * with ``early_stopping="heuristic"`` (the default, Hugging Face's rule), also once the pool
      is full and the best live hypothesis, scored at its current length, does not beat the
      worst finished one. With ``length_penalty > 0`` the exact bound alone rarely stops before
      the length limit; ``"exact"`` pays that for a search that never drops a possible winner.

    With ``beam_size=1`` this is greedy search (as fused with CTC or an LM).
    """
    options = (options or DecodingOptions()).check()
    beam, eos, device = options.beam_size, model.tokenizer.eos_id, memory.device
    batch = memory.shape[0]
    prefixes, offsets = _prefixes(model, prompt, context, batch, device)
    pairs = fused_scorers(model, options, ctc_log_probs, lm, scorers)
    shown = _visible(model, prompt)
    limits = _limits(memory_mask, options, _room(model, prefixes, shown, pairs))
    max_new, shortest = int(limits.max()), int(limits.min())
    bad_endings = _bad_endings(model.tokenizer, options.bad_endings, device)
    cache, logits = _start(model, memory, memory_mask, prefixes, offsets, max_new)
    cache, logits = _share(cache, beam), logits.repeat_interleave(beam, 0)
    suppress = _Suppress(model.tokenizer, options, logits.shape[-1], device)
    timestamps = _TimestampRules(model.tokenizer, options, logits.shape[-1], device)
    fusion = _Fused(pairs, shown, memory_mask, beam, max_new)
    candidates_per_row = None
    if fusion.partial:
        candidates_per_row = min(logits.shape[-1], max(2, math.ceil(options.ctc_candidates * beam)))
    lengths = torch.arange(1, max_new + 1, device=device, dtype=torch.float)
    heuristic = options.early_stopping == "heuristic"
    # Live beams of the inputs still running; ``alive`` maps them back to input numbers.
    alive = torch.arange(batch, device=device)
    scores = torch.zeros(batch, beam, device=device)
    scores[:, 1:] = NEG_INF  # all beams start equal: expand only the first
    tokens = torch.zeros(batch * beam, 0, dtype=torch.long, device=device)
    # Each input's pool of finished hypotheses: ranking scores (best first), totals, tokens.
    pool_scores = torch.full((batch, beam), NEG_INF, device=device)
    pool_totals = torch.zeros(batch, beam, device=device)
    pool_tokens = torch.full((batch, beam, max_new), eos, dtype=torch.long, device=device)
    for step in range(max_new):
        inputs = alive.shape[0]
        log_probs = timestamps.apply(suppress.apply(logits.float().log_softmax(-1), step), tokens)
        log_probs = _filter(fusion.full(log_probs, tokens), step, limits[alive].repeat_interleave(beam), tokens,
                            options, eos, bad_endings, shortest)
        if fusion.partial:
            # Candidate scorers (CTC) score only each row's best candidates, all rows at once;
            # ``</s>`` is always one of them, so a hypothesis that CTC cannot extend can still end.
            others = log_probs.clone()
            others[:, eos] = NEG_INF
            best = others.topk(candidates_per_row - 1, -1).indices
            candidates = torch.cat([best, torch.full_like(log_probs[:, :1], eos, dtype=torch.long)], 1)
            step_scores = log_probs.gather(1, candidates)
            # In a row with fewer finite scores than candidates (e.g. at its length limit, where only
            # ``</s>`` is allowed), topk may pick ``</s>`` among the ties at -inf: gathered from
            # ``log_probs`` it would score like the real ``</s>``, and the pool would take the same
            # hypothesis twice. That copy stays impossible.
            step_scores[:, :-1] = step_scores[:, :-1].masked_fill(best == eos, NEG_INF)
            step_scores = step_scores + fusion.candidates(tokens, candidates)
        else:
            step_scores, candidates = log_probs, None
        width = step_scores.shape[-1]
        totals = (scores.view(-1, 1) + step_scores).view(inputs, beam * width)
        top_scores, top_index = totals.topk(min(2 * beam, beam * width), -1)  # >= beam of them go on
        top_beam, top_position = top_index // width, top_index % width
        source = torch.arange(inputs, device=device)[:, None] * beam + top_beam  # (inputs, 2 beam) rows
        top_token = top_position if candidates is None else candidates[source, top_position]
        is_eos = top_token == eos

        # Hypotheses that end among the best ``beam`` candidates join the pool, as in fairseq.
        length = step + 1
        ending = is_eos[:, :beam] & (top_scores[:, :beam] > NEG_INF)
        ended_scores = final_score(top_scores[:, :beam], length, options).masked_fill(~ending, NEG_INF)
        ended_tokens = torch.cat([tokens[source[:, :beam].reshape(-1)].view(inputs, beam, step),
                                  top_token[:, :beam, None]], -1)
        ended_tokens = torch.nn.functional.pad(ended_tokens, (0, max_new - length), value=eos)
        merged_scores, keep = torch.cat([pool_scores[alive], ended_scores], 1).topk(beam, -1)
        pool_scores[alive] = merged_scores
        pool_totals[alive] = torch.cat([pool_totals[alive], top_scores[:, :beam]], 1).gather(1, keep)
        pool_tokens[alive] = torch.cat([pool_tokens[alive], ended_tokens], 1).gather(
            1, keep[..., None].expand(-1, -1, max_new))

        # The best ``beam`` candidates that did not end go on.
        scores, live = top_scores.masked_fill(is_eos, NEG_INF).topk(beam, -1)
        index = source.gather(1, live).view(-1)
        new_tokens = top_token.gather(1, live).view(-1)
        tokens = torch.cat([tokens[index], new_tokens[:, None]], 1)
        cache.reorder(index)
        fusion.advance(index, new_tokens)

        # Done when no live hypothesis can beat the finished ones. Step scores are log-probabilities
        # (<= 0), so the best a live beam can reach is its total now at the most favourable length
        # still allowed.
        limit = limits[alive]
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
    return _collect(pool_scores, pool_totals, pool_tokens, eos, options.nbest, shown)


def _collect(pool_scores, pool_totals, pool_tokens, eos: int, nbest: int, prompt: list[int]):
    results = []
    for scores_row, totals_row, tokens_row in zip(pool_scores.tolist(), pool_totals.tolist(), pool_tokens.tolist()):
        hyps = [Hypothesis(row[: row.index(eos)], score, total, prompt)
                for score, total, row in zip(scores_row, totals_row, tokens_row) if score > NEG_INF]
        # An input whose every continuation was impossible (e.g. CTC cannot align it) ends empty.
        results.append(hyps[:nbest] or [Hypothesis([], NEG_INF, NEG_INF, prompt)])
    return results


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
    prefixes, offsets = _prefixes(model, prompt, None, memory.shape[0], memory.device)
    limits = _limits(memory_mask, options, _room(model, prefixes, prompt)).repeat_interleave(count)
    max_new = int(limits.max())
    bad_endings = _bad_endings(model.tokenizer, options.bad_endings, memory.device)
    cache, logits = _start(model, memory, memory_mask, prefixes, offsets, max_new)
    cache, logits = _share(cache, count), logits.repeat_interleave(count, 0)
    suppress = _Suppress(model.tokenizer, options, logits.shape[-1], memory.device)
    timestamps = _TimestampRules(model.tokenizer, options, logits.shape[-1], memory.device)
    tokens = torch.zeros(logits.shape[0], 0, dtype=torch.long, device=memory.device)
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=memory.device)
    for step in range(max_new):
        log_probs = suppress.apply((logits.float() / options.temperature).log_softmax(-1), step)
        log_probs = timestamps.apply(log_probs, tokens)
        log_probs = _filter(log_probs, step, limits, tokens, options, eos, bad_endings)
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
