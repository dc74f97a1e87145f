"""Decoding a batch of one route: its prompts and contexts as token ids, the encoder's memory, the
fused scorers, and one search per group of inputs that share a prompt (the one place inputs are
grouped by prompt). Bound to the model as :meth:`Seq2Seq.generate` and :meth:`Seq2Seq.decode_texts`."""

from __future__ import annotations

from dataclasses import asdict

import torch

from ..errors import InputError
from .options import DecodingOptions, Hypothesis
from .scorers.fusion import fused_scorers
from .search import beam_search, greedy_search


@torch.no_grad()
def generate(model, batch: dict, prompt=None, lm=None, scorers=(), context=None, boost=None,
             **options) -> list[list[Hypothesis]]:
    """Decode a batch (``inputs``, ``lengths``); returns n-best hypotheses per input, best first.

    ``prompt``: prompt tokens and/or a text prefix the decoder is forced through after the
    task token (a string such as ``"<|short|> a photo of"``, or ids), or a list of them, one
    per input; it is not scored, and ``Hypothesis.output`` starts with it. ``context``: text
    that conditions the output (the sentence before, names or words to expect), forced before
    ``<s>`` in its own segment and never part of the output: a string for every input, or a
    list of one per input (each a string or a list of words). A batch from a task's
    ``collate`` brings each example's own prompt and context (``prompts``, ``contexts``);
    ``prompt`` adds to them, ``context`` replaces them.

    ``boost``: words or phrases to favour (contextual biasing, fused as a
    :class:`~mmseq.decoding.scorers.boost.ContextBoost` with weight ``boost_weight``; nothing
    happens while it is 0): a list of strings for every input, or a list of one per input (each a
    list of strings, a string for one phrase, or None). A batch from a task's ``collate`` brings
    each example's own list (``boosts``, None where its line has none): an input's own list takes
    the place of ``boost``, as a manifest line's ``"boost"`` replaces ``--boost FILE``.

    ``lm``: a language model scorer fused with weight ``lm_weight``: a
    :class:`mmseq.decoding.scorers.lm.LanguageModel` or an n-gram
    :class:`mmseq.decoding.scorers.ngram.NGramLM` (:func:`mmseq.load_lm` reads either from a path).
    ``options`` override the checkpoint's :class:`DecodingOptions` (``beam_size``, ``ctc_weight``, ``nbest``, ...). ``scorers``: more ``(scorer, weight)``
    pairs fused with the decoder (:class:`mmseq.decoding.scorers.Scorer`). With ``timestamp_tokens=True``
    the output holds the tokenizer's timestamp tokens, and the prompt drops the token that asks
    for none (:meth:`~mmseq.tokenizer.Tokenizer.timestamp_prompt`).
    """
    route = model.route(batch.get("task"))
    options = DecodingOptions(**{**asdict(model.decoding), **route.decoding, **options}).check()
    count = batch["inputs"].shape[0]
    extra = _per_input(prompt, count, "prompt", model.tokenizer.encode_prompt)
    prompts = [model.tokenizer.timestamp_prompt(model.tokenizer.merge_prompt(route.task.prompt(), list(own) + more),
                                               options.timestamp_tokens)
               for own, more in zip(batch.get("prompts") or [[]] * count, extra)]
    contexts = batch.get("contexts") or [[]] * count
    if context is not None:
        contexts = _per_input(context, count, "context", route.task.context_ids, words=True)
    boosts = _boost_lists(boost, batch.get("boosts"), count)
    lm = _fused_lm(lm, options, model.tokenizer)
    inputs = batch["inputs"].to(model.device)
    lengths = batch.get("lengths")
    memory, memory_mask = route.encoder(inputs, lengths.to(model.device) if lengths is not None else None)
    ctc = model.ctc_log_probs(memory, route.ctc_head) if options.ctc_weight > 0 and route.ctc_head is not None else None
    return _search_groups(model, options, memory, memory_mask, ctc, prompts, contexts, boosts, lm, scorers)


def _fused_lm(lm, options: DecodingOptions, tokenizer):
    """``lm=`` of :func:`generate` checked against ``tokenizer``; None when not fused."""
    if lm is not None and not hasattr(lm, "check_tokenizer"):
        raise InputError(f"lm={lm!r}: give a loaded language model (mmseq.load_lm(path, model.tokenizer))")
    lm = lm if lm is not None and options.lm_weight > 0 else None
    if lm is not None:
        lm.check_tokenizer(tokenizer)
    return lm


def _search_groups(model, options: DecodingOptions, memory, memory_mask, ctc, prompts: list, contexts: list,
                   boosts: list, lm, scorers) -> list[list[Hypothesis]]:
    """One search per group of inputs that share a prompt, each with its members' contexts and
    fused scorers (their boosted words among them); the hypotheses in input order."""
    count = len(prompts)
    # Inputs of one prompt are searched together (the fused scorers condition on it); contexts
    # of any length share a search (left-padded, see mmseq.decoding.search).
    groups: dict[tuple, list[int]] = {}
    for i, ids in enumerate(prompts):
        groups.setdefault(tuple(ids), []).append(i)
    results: list = [None] * count
    for ids, members in groups.items():
        part = None if len(members) == count else torch.tensor(members, device=model.device)
        pick = (lambda x: x) if part is None else (lambda x: x.index_select(0, part))
        fused = fused_scorers(model.tokenizer, options, None if ctc is None else pick(ctc), lm, scorers,
                              [boosts[i] for i in members])
        group_context = [contexts[i] for i in members]
        if options.beam_size == 1 and not fused:
            found = [[hyp] for hyp in greedy_search(model, pick(memory), pick(memory_mask), list(ids), options,
                                                    context=group_context)]
        else:
            found = beam_search(model, pick(memory), pick(memory_mask), list(ids), options, scorers=fused,
                                context=group_context)
        for i, hyps in zip(members, found):
            results[i] = hyps
    return results


def decode_texts(model, batch: dict, **options) -> list[str]:
    """Best text per input; a forced text prefix of the prompt starts it."""
    return [model.tokenizer.decode(hyps[0].output) if hyps else "" for hyps in model.generate(batch, **options)]


def _per_input(value, count: int, name: str, encode, words: bool = False) -> list[list[int]]:
    """``prompt=`` or ``context=`` of :meth:`Seq2Seq.generate` as ids for each of ``count`` inputs:
    None (nothing), one value for all (a string, or ids), or a list of one value per input. With
    ``words`` a per-input value may itself be a list of words."""
    if value is None:
        return [[] for _ in range(count)]
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value)
                                  and not (words and value)):
        ids = encode(value) if isinstance(value, str) else list(value)
        return [list(ids) for _ in range(count)]
    values = list(value)
    if len(values) != count:
        raise InputError(f"{name}= holds {len(values)} values for {count} inputs: give one value, or one per input")
    return [[] if v is None else (encode(v) if isinstance(v, str) or words else list(v)) for v in values]


def _boost_lists(boost, own, count: int) -> list:
    """The words each of ``count`` inputs boosts (a list of strings, or None): its own from
    ``own`` (a batch's ``boosts``), else ``boost`` of :func:`generate` (see there)."""
    def words(value, what: str):
        if value is None or isinstance(value, str):
            return None if value is None else [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise InputError(f"{what} must be a list of words or phrases (strings), got {value!r:.80}")

    if not isinstance(boost, (list, tuple)) or all(isinstance(v, str) for v in boost):
        default = [words(boost, "boost=")] * count
    elif len(boost) != count:
        raise InputError(f"boost= holds {len(boost)} lists for {count} inputs: give one list, or one per input")
    else:
        default = [words(value, f"boost= of input {i}") for i, value in enumerate(boost)]
    own = own or [None] * count
    return [default[i] if own[i] is None else words(own[i], f"the boost of input {i}") for i in range(count)]
