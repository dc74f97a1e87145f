"""Logit filters: the rules a search applies to each step's log-probabilities before it chooses,
one small class each behind :class:`LogitFilter` (as openai-whisper's ``decoding.py`` keeps
``SuppressTokens`` and ``ApplyTimestampRules``). :func:`build_filters` makes a search's list once;
the search applies them in order, every row at once, in place.

All are tensor operations: none synchronises with the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .options import DecodingOptions

NEG_INF = float("-inf")


@dataclass
class Step:
    """A search step as the filters see it."""
    index: int  # new tokens generated so far
    tokens: torch.Tensor  # (rows, index) the new tokens of each row (prompt excluded)
    limits: torch.Tensor  # (rows,) most new tokens of each row, ``</s>`` included


class LogitFilter:
    """One rule over the log-probabilities ``(rows, vocab)`` of a step."""

    def apply(self, log_probs: torch.Tensor, step: Step) -> torch.Tensor:
        """``log_probs`` with the rule applied (in place where it can be); returns them."""
        raise NotImplementedError


class Suppress(LogitFilter):
    """Tokens never generated: the tokenizer's special and prompt tokens (``</s>`` is the only one
    allowed) and ``options.suppress_tokens``; at the first step also ``options.suppress_at_start``.
    One in-place add of a mask made once per search."""

    def __init__(self, tokenizer, options: DecodingOptions, vocab: int, device):
        self.mask = torch.zeros(vocab, device=device)
        specials = tokenizer.special_ids
        self.mask[specials.start:specials.stop] = NEG_INF
        self.mask[tokenizer.eos_id] = 0.0
        if options.timestamp_tokens and tokenizer.timestamp_begin is not None:
            self.mask[tokenizer.timestamp_begin:] = 0.0  # generated under TimestampRules
        self.mask[[i for i in options.suppress_tokens if 0 <= i < vocab]] = NEG_INF
        self.first = self.mask.clone()
        self.first[[i for i in options.suppress_at_start if 0 <= i < vocab]] = NEG_INF

    def apply(self, log_probs, step):
        return log_probs.add_(self.first if step.index == 0 else self.mask)


class TimestampRules(LogitFilter):
    """Timestamp tokens (``options.timestamp_tokens``: the tokenizer's ids from ``timestamp_begin``
    on, one every ``timestamp_step`` seconds) by openai-whisper's rules, as its
    ``ApplyTimestampRules`` and transformers' ``WhisperTimeStampLogitsProcessor`` apply them: the
    output opens with a time (at most ``options.max_initial_timestamp`` seconds); text is followed
    by a time only to close a segment, and a closing time by the next segment's opening time or by
    ``</s>``; times never go back (an opening time may repeat the closing one before it); and a time
    is forced when all times together are likelier than any one other token.

    Applied after :class:`Suppress`, from the tokens so far alone: a beam's reordering needs no
    state here."""

    def __init__(self, tokenizer, options: DecodingOptions, vocab: int, device):
        self.begin = tokenizer.timestamp_begin
        if self.begin is None:
            raise ConfigError("decoding.timestamp_tokens: the tokenizer has no timestamp tokens")
        initial = options.max_initial_timestamp
        self.last_initial = None if initial is None else self.begin + round(initial / tokenizer.timestamp_step)
        self.eos = tokenizer.eos_id
        self.times = torch.arange(self.begin, vocab, device=device)

    def apply(self, log_probs, step):
        tokens = step.tokens
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


class MinLength(LogitFilter):
    """No ``</s>`` before ``length`` new tokens."""

    def __init__(self, length: int, eos: int):
        self.length, self.eos = length, eos

    def apply(self, log_probs, step):
        if step.index < self.length:
            log_probs[:, self.eos] = NEG_INF
        return log_probs


class BadEndings(LogitFilter):
    """No ``</s>`` right after one of ``endings`` (``DecodingOptions.bad_endings``): an id stands
    for itself; a word for the tokens of ``" " + word`` (so that with a character tokenizer "the"
    does not also ban "bathe") and, when they make up the whole output, the tokens of ``word``."""

    def __init__(self, tokenizer, endings, device):
        patterns = []
        for ending in endings:
            if isinstance(ending, str):
                patterns.append((tokenizer.encode(" " + ending), False))
                patterns.append((tokenizer.encode(ending), True))
            else:
                patterns.append(([int(ending)], False))
        # (ids, whole): ``whole`` patterns ban the end only when they are the whole output
        self.patterns = [(torch.tensor(ids, dtype=torch.long, device=device), whole) for ids, whole in patterns if ids]
        self.eos = tokenizer.eos_id

    def apply(self, log_probs, step):
        for pattern, whole in self.patterns:
            if step.index == len(pattern) or (step.index > len(pattern) and not whole):
                bad = (step.tokens[:, step.index - len(pattern):] == pattern).all(1)
                log_probs[:, self.eos] = log_probs[:, self.eos].masked_fill(bad, NEG_INF)
        return log_probs


class NoRepeatNGram(LogitFilter):
    """No n-gram of ``size`` tokens twice in a row's new tokens (``</s>`` always allowed)."""

    def __init__(self, size: int, eos: int):
        self.size, self.eos = size, eos

    def apply(self, log_probs, step):
        n, tokens = self.size, step.tokens
        if step.index < n:
            return log_probs
        # Every (n-1)-gram seen so far, with the token that followed it: ban that token now.
        windows = tokens.unfold(1, n, 1)  # (rows, count, n)
        same = (windows[:, :, :-1] == tokens[:, None, step.index - n + 1:]).all(-1)  # (rows, count)
        banned = torch.zeros_like(log_probs, dtype=torch.bool)
        banned.scatter_(1, windows[:, :, -1].masked_fill(~same, self.eos), same)
        banned[:, self.eos] = False
        return log_probs.masked_fill_(banned, NEG_INF)


class LengthLimit(LogitFilter):
    """At its length limit a row must end: ``</s>`` is appended at no cost (as ESPnet does), so a
    cut-off hypothesis is scored by what it generated. The search applies it last, after the fused
    scorers. ``shortest``: no row's limit is below it, so the steps before it skip the test."""

    def __init__(self, eos: int, shortest: int = 0):
        self.eos, self.shortest = eos, shortest

    def apply(self, log_probs, step):
        if step.index + 1 < self.shortest:
            return log_probs
        at_limit = (step.index + 1 >= step.limits)[:, None]
        ended = torch.full_like(log_probs[:1], NEG_INF)
        ended[:, self.eos] = 0.0
        return log_probs.copy_(torch.where(at_limit, ended, log_probs))


def build_filters(tokenizer, options: DecodingOptions, vocab: int, device) -> list[LogitFilter]:
    """The filters of ``options`` in the order a search applies them, before the fused scorers
    (:class:`LengthLimit`, which goes after them, is the search's to add)."""
    filters: list[LogitFilter] = [Suppress(tokenizer, options, vocab, device)]
    if options.timestamp_tokens:
        filters.append(TimestampRules(tokenizer, options, vocab, device))
    if options.min_length:
        filters.append(MinLength(options.min_length, tokenizer.eos_id))
    if options.bad_endings:
        endings = BadEndings(tokenizer, options.bad_endings, device)
        if endings.patterns:
            filters.append(endings)
    if options.no_repeat_ngram:
        filters.append(NoRepeatNGram(options.no_repeat_ngram, tokenizer.eos_id))
    return filters


def apply_filters(filters: list[LogitFilter], log_probs: torch.Tensor, step: Step) -> torch.Tensor:
    for rule in filters:
        log_probs = rule.apply(log_probs, step)
    return log_probs
