"""``mmseq import whisper SRC OUT``: a Whisper checkpoint in any of the forms users keep (a
CTranslate2 folder, an openai-whisper ``.pt``, a transformers folder; read safely by
:mod:`mmseq.importers.whisper_sources`) made an ordinary mmseq checkpoint folder.

It is imported into the one shape, not wrapped: one route ``asr`` with the ``whisper`` encoder,
the shared :class:`~mmseq.decoder.TextDecoder` (token vectors unscaled, Whisper's alignment heads
in its settings), the ``bpe`` tokenizer with Whisper's special tokens in their roles
(``<|startoftranscript|>`` is ``<s>``, ``<|endoftext|>`` is ``</s>``, ``<|startofprev|>`` opens
the context segment), the route's prompt ``<|en|> <|transcribe|> <|notimestamps|>`` (language and
task are prompt slots a user's prompt replaces; ``<|notimestamps|>`` is the tokenizer's
``no_timestamps`` role, dropped when ``generate(..., timestamp_tokens=True)`` decodes timestamp
tokens, the first at most 1 s in, as openai-whisper's), and Whisper's suppressed tokens and blank
suppression as decoding settings.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..checkpoint import build_model, save
from ..errors import CheckpointError
from .whisper_sources import WhisperSource, read_whisper

PAD_CANDIDATES = ("<|startoflm|>",)  # never generated nor forced: what padding may hold


def mmseq_weights(source: WhisperSource, route: str = "asr") -> dict[str, torch.Tensor]:
    """openai-whisper's weight names to mmseq's: query, key and value fused (the key's absent bias
    as zeros), the decoder's blocks as :class:`~mmseq.decoder.DecoderLayer` s."""
    w, dims = source.weights, source.dims
    out: dict[str, torch.Tensor] = {}
    enc = f"encoders.{route}."

    def fused(prefix: str, parts=("query", "key", "value")) -> tuple[torch.Tensor, torch.Tensor]:
        weight = torch.cat([w[f"{prefix}.{p}.weight"] for p in parts])
        bias = torch.cat([w.get(f"{prefix}.{p}.bias", torch.zeros(w[f"{prefix}.{p}.weight"].shape[0])) for p in parts])
        return weight, bias

    for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "positional_embedding",
                 "ln_post.weight", "ln_post.bias"):
        out[enc + name] = w["encoder." + name]
    for i in range(dims["n_audio_layer"]):
        old, new = f"encoder.blocks.{i}.", f"{enc}blocks.{i}."
        out[new + "qkv.weight"], out[new + "qkv.bias"] = fused(old + "attn")
        for a, b in (("attn.out", "out"), ("attn_ln", "attn_ln"), ("mlp.0", "mlp.0"), ("mlp.2", "mlp.2"),
                     ("mlp_ln", "mlp_ln")):
            out[f"{new}{b}.weight"], out[f"{new}{b}.bias"] = w[f"{old}{a}.weight"], w[f"{old}{a}.bias"]
    out["decoder.embed.weight"] = w["decoder.token_embedding.weight"]
    out["decoder.positions.weight"] = w["decoder.positional_embedding"]
    out["decoder.norm.weight"], out["decoder.norm.bias"] = w["decoder.ln.weight"], w["decoder.ln.bias"]
    for i in range(dims["n_text_layer"]):
        old, new = f"decoder.blocks.{i}.", f"decoder.layers.{i}."
        out[new + "self_qkv.weight"], out[new + "self_qkv.bias"] = fused(old + "attn")
        out[new + "cross_kv.weight"], out[new + "cross_kv.bias"] = fused(old + "cross_attn", ("key", "value"))
        for a, b in (("attn.out", "self_out"), ("attn_ln", "self_norm"), ("cross_attn.query", "cross_q"),
                     ("cross_attn.out", "cross_out"), ("cross_attn_ln", "cross_norm"), ("mlp.0", "ffn.0"),
                     ("mlp.2", "ffn.3"), ("mlp_ln", "ffn_norm")):
            out[f"{new}{b}.weight"], out[f"{new}{b}.bias"] = w[f"{old}{a}.weight"], w[f"{old}{a}.bias"]
    return {name: tensor.contiguous() for name, tensor in out.items()}


def non_speech_tokens(tokenizer) -> list[int]:
    """openai-whisper's suppressed symbols (speaker tags, music notes, brackets ...), for a source
    that does not list its own: each symbol's token alone or after a space, where it is one token."""
    symbols = list("\"#()*+/:;<=>@[\\]^_`{|}~「」『』")
    symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
    miscellaneous = set("♩♪♫♬♭♮♯")
    encode = tokenizer.backend.encode
    found = {encode(" -", add_special_tokens=False).ids[0], encode(" '", add_special_tokens=False).ids[0]}
    for symbol in symbols + sorted(miscellaneous):
        for ids in (encode(symbol, add_special_tokens=False).ids, encode(" " + symbol, add_special_tokens=False).ids):
            if len(ids) == 1 or symbol in miscellaneous:
                found.add(ids[0])
    return sorted(found)


def whisper_config(source: WhisperSource, tokenizer, tail: float = 30.0, language: str = "en",
                   feature_padding: str = "silence") -> dict:
    """The checkpoint ``config.json`` of an imported Whisper."""
    dims = source.dims
    multilingual = "language" in tokenizer.slots and dims["n_vocab"] >= 51865
    prompt = ([f"<|{language}|>", "<|transcribe|>"] if multilingual else []) + ["<|notimestamps|>"]
    eos = tokenizer.eos_id
    blank = tokenizer.backend.encode(" ", add_special_tokens=False).ids
    suppress = source.suppress_tokens if source.suppress_tokens is not None else non_speech_tokens(tokenizer)
    at_start = source.suppress_blank_ids if source.suppress_blank_ids is not None else blank + [eos]
    encoder = {"name": "whisper", "n_mels": dims["n_mels"], "dim": dims["n_audio_state"],
               "heads": dims["n_audio_head"], "layers": dims["n_audio_layer"], "positions": dims["n_audio_ctx"],
               "tail": tail, "feature_padding": feature_padding}
    decoder = {"dim": dims["n_text_state"], "layers": dims["n_text_layer"], "heads": dims["n_text_head"],
               "ffn_dim": 4 * dims["n_text_state"], "dropout": 0.0, "max_length": dims["n_text_ctx"],
               "scale_embedding": False,
               "alignment_heads": [list(map(int, h)) for h in source.alignment_heads] if source.alignment_heads else None}
    route = {"task": "asr", "encoder": encoder, "ctc_weight": 0.0, "prompt": " ".join(prompt),
             # a list in the context is joined by ", " (the default): joined by spaces, lower-case words without
             # punctuation, it fits more words but Whisper answers in their style and repeats short clips to
             # the end of its room (4 of 100 Common Voice clips; tools/bench_biasing.py --context-join " ")
             "prompting": {"context_length": dims["n_text_ctx"] // 2 - 1}}
    return {"model": {"decoder": decoder, "label_smoothing": 0.0, "tasks": {"asr": route}},
            "tokenizer": tokenizer.config(),
            "decoding": {"max_length": dims["n_text_ctx"] // 2, "suppress_tokens": [int(i) for i in suppress],
                         "suppress_at_start": [int(i) for i in at_start], "max_initial_timestamp": 1.0},
            "training": {"imported": {"kind": "whisper", "from": source.origin, "dims": dims}}}


def whisper_tokenizer(source: WhisperSource, folder: Path):
    """The ``bpe`` tokenizer of a source's ``tokenizer.json`` (written into ``folder``)."""
    from ..tokenizer import BPETokenizer

    if source.tokenizer_json is None:
        raise CheckpointError("the Whisper source has no tokenizer.json: give one with --tokenizer")
    path = folder / BPETokenizer.file_name
    path.write_bytes(source.tokenizer_json)
    from tokenizers import Tokenizer as HFTokenizer

    backend = HFTokenizer.from_file(str(path))
    pad = next((t for t in PAD_CANDIDATES if backend.token_to_id(t) is not None), None)
    if pad is None or backend.token_to_id("<|startoftranscript|>") is None:
        raise CheckpointError(f"{path}: not a Whisper tokenizer (no <|startoftranscript|> or <|startoflm|>)")
    names = [backend.id_to_token(i) for i in range(backend.get_vocab_size())]
    sot, translate = names.index("<|startoftranscript|>"), names.index("<|translate|>")
    slots = {"task": ["<|transcribe|>", "<|translate|>"]}
    if translate > sot + 1:
        slots["language"] = names[sot + 1:translate]
    roles = {"bos": "<|startoftranscript|>", "eos": "<|endoftext|>", "pad": pad, "context": "<|startofprev|>",
             "no_timestamps": "<|notimestamps|>"}
    return BPETokenizer(path, roles, vocab_size=source.dims["n_vocab"], slots=slots)


def import_whisper(src: str | os.PathLike, out: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
                   tail: float = 30.0, language: str = "en", feature_padding: str = "silence"):
    """Read a Whisper checkpoint ``src`` (checked: shapes, completeness) and write the mmseq
    checkpoint folder ``out`` atomically; returns the loaded model."""
    source = read_whisper(src, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        bpe = whisper_tokenizer(source, Path(tmp))
        config = whisper_config(source, bpe, tail, language, feature_padding)
        model = build_model(config, tmp)
    weights = mmseq_weights(source)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise CheckpointError(f"{src}: the import left {missing[0]} unset ({len(missing)} weights in all)")
    for name, tensor in weights.items():
        if name not in expected or tuple(expected[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{src}: {name} has shape {tuple(tensor.shape)}, the model wants "
                                  f"{tuple(expected[name].shape) if name in expected else 'none'}")
    model.load_state_dict(weights, strict=True)
    model.training_record = dict(config["training"])
    model.eval()
    save(model, out)
    return model
