"""The settings of a search, one dataclass (as whisper's ``DecodingOptions``), each field with its
allowed range (:func:`mmseq.checks.setting`). A light module, dataclasses only: the config reads it
without loading torch.

The ranges are checked once, where options enter mmseq (:func:`check_decoding`: a
checkpoint's config, a training YAML, the command line, :func:`mmseq.decoding.generate.generate`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..checks import BOOL, MAX_BEAM, Choice, Float, Int, check_fields, setting
from ..errors import ConfigError


@dataclass
class DecodingOptions:
    beam_size: int = setting(1, Int(1, MAX_BEAM))  # hypotheses kept per input (1 without scorers: greedy search)
    max_length: int = setting(200, Int(1, 100_000))  # most new tokens (prompt not counted)
    # most new tokens per memory frame, e.g. 1.0 for speech (None: no limit)
    max_length_ratio: float | None = setting(None, Float(0, 1000, open_low=True, optional=True))
    min_length: int = setting(0, Int(0, 100_000))  # fewest new tokens before ``</s>`` is allowed
    # length normalisation: score = total / length ** length_penalty (0: none)
    length_penalty: float = setting(1.0, Float(0, 10))
    # added per new token before normalising (ESPnet's "penalty"); > 0 favours long outputs
    length_bonus: float = setting(0.0, Float(-100, 100))
    nbest: int = setting(1, Int(1, MAX_BEAM))  # hypotheses returned per input (at most beam_size)
    # when an input stops: "heuristic" or "exact" (see mmseq.decoding.search.beam_search)
    early_stopping: str = setting("heuristic", Choice("heuristic", "exact"))
    ctc_weight: float = setting(0.0, Float(0, 1))  # joint CTC/attention decoding (speech models with a CTC head)
    # the fused score's best ``ctc_candidates * beam`` tokens get CTC scores
    ctc_candidates: float = setting(1.5, Float(1, 100))
    # shallow fusion with an external language model (``generate(lm=...)``)
    lm_weight: float = setting(0.0, Float(0, 10))
    # contextual biasing: weight of the bonus for listed words (``generate(boost=...)``, a manifest
    # line's ``"boost"``, ``--boost FILE``; mmseq.decoding.scorers.boost.ContextBoost); 0: off
    boost_weight: float = setting(0.0, Float(0, 100))
    no_repeat_ngram: int = setting(0, Int(0, 100))  # forbid repeating any n-gram of this size (0: off)
    # words ("a", "the") or token ids that may not precede ``</s>``
    bad_endings: list[int | str] = field(default_factory=list)
    temperature: float = setting(1.0, Float(0, 100, open_low=True))  # sampling only
    top_k: int = setting(0, Int(0, 10_000_000))  # sampling only (0: whole vocabulary)
    suppress_tokens: list[int] = field(default_factory=list)  # ids never generated (Whisper's non-speech symbols)
    suppress_at_start: list[int] = field(default_factory=list)  # ids never generated first (Whisper's blank and </s>)
    # generate the tokenizer's timestamp tokens, by their rules (mmseq.decoding.filters.TimestampRules)
    timestamp_tokens: bool = setting(False, BOOL)
    # with timestamp_tokens: the latest first timestamp, in seconds (None: any)
    max_initial_timestamp: float | None = setting(None, Float(0, None, optional=True))

    def check(self) -> "DecodingOptions":
        """Raise :class:`~mmseq.errors.ConfigError` on a setting out of its range
        (:func:`check_decoding`); returns itself."""
        check_decoding(self)
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


def check_decoding(options, prefix: str = "decoding", source: str = "") -> None:
    """:class:`mmseq.decoding.options.DecodingOptions` (a dataclass or a dict of its fields): each
    field's range (declared on the field), ``nbest`` at most ``beam_size``, and the token lists."""
    check_fields(options, DecodingOptions, prefix, source)
    values = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else options
    if values.get("ctc_weight") == 1:  # the decoder proposes the candidates CTC scores: it needs a weight
        raise ConfigError(f"{source + ': ' if source else ''}{prefix}.ctc_weight=1: must be below 1")
    if "nbest" in values and "beam_size" in values and values["nbest"] > values["beam_size"]:
        raise ConfigError(f"{source + ': ' if source else ''}{prefix}.nbest={values['nbest']}: must be at most "
                          f"beam_size ({values['beam_size']})")
    endings = values.get("bad_endings", [])
    if not isinstance(endings, list) or not all(isinstance(e, (int, str)) and not isinstance(e, bool) for e in endings):
        raise ConfigError(f"{source + ': ' if source else ''}{prefix}.bad_endings={endings!r}: must be a list of "
                          "words or token ids")
    for name in ("suppress_tokens", "suppress_at_start"):
        ids = values.get(name, [])
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ConfigError(f"{source + ': ' if source else ''}{prefix}.{name}: must be a list of token ids")
