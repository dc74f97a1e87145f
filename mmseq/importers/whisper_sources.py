"""Whisper checkpoints in their three on-disk forms, read safely into openai-whisper's naming.

* a CTranslate2 folder (faster-whisper's form): ``model.bin`` read by :mod:`.ctranslate2` (no
  CTranslate2 needed), ``config.json`` (alignment heads, suppressed ids), ``tokenizer.json``;
* an openai-whisper ``.pt`` (``{"dims", "model_state_dict"}``), read with ``weights_only=True``,
  so a pickle that would run code is refused, not run;
* a transformers folder (``config.json`` of ``model_type: whisper``, ``model.safetensors``,
  ``generation_config.json``, ``tokenizer.json``), every tensor's shape checked against the config
  from the safetensors header before any is loaded.

Every reader ends in :func:`check_shapes`: the weights must be exactly openai-whisper's state dict
for ``dims`` (``whisper/model.py``), so that whatever builds a model from them needs no checks of
its own. Errors are one-line :class:`CheckpointError`\\ s naming the file and what is wrong.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.files import check_regular, escape, read_regular_file
from ..errors import CheckpointError
from .ctranslate2 import read_model_bin

DIMS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
        "n_vocab", "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer")
MAX_JSON_BYTES = 64 * 2**20
MAX_LAYERS, MAX_SIZE = 1024, 2**20  # bounds on dims, so that a corrupt header cannot make the checks huge


@dataclass
class WhisperSource:
    dims: dict  # openai-whisper's ModelDimensions, as a dict
    weights: dict[str, torch.Tensor]  # float32, openai-whisper's state-dict naming
    alignment_heads: list[tuple[int, int]] | None  # (decoder layer, head), when the source says
    suppress_tokens: list[int] | None
    suppress_blank_ids: list[int] | None  # suppressed at the first sampled token only
    tokenizer_json: bytes | None  # a Hugging Face ``tokenizers`` tokenizer.json
    origin: str  # "ctranslate2", "openai" or "transformers"


def read_whisper(path: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> WhisperSource:
    """Read a Whisper checkpoint in any of its three forms (see the module). ``tokenizer``: a
    tokenizer.json (or a folder holding one) to use instead of the source's; without it, and when
    the source has none, one is built from openai-whisper's tiktoken files (when that package is
    installed and the vocabulary is one of Whisper's)."""
    path = Path(path)
    if path.is_dir() and (path / "model.bin").exists():
        source = _read_ctranslate2(path)
    elif path.is_dir() and (path / "config.json").exists():
        source = _read_transformers(path)
    elif path.is_dir():
        raise _error(path, "not a Whisper checkpoint (no model.bin, no config.json)")
    else:
        source = _read_openai(path)
    if tokenizer is not None:
        tokenizer = Path(tokenizer)
        source.tokenizer_json = _read_tokenizer(tokenizer / "tokenizer.json" if tokenizer.is_dir() else tokenizer)
    elif source.tokenizer_json is None and source.dims["n_vocab"] in (51864, 51865, 51866):
        try:
            source.tokenizer_json = tiktoken_tokenizer_json(source.dims["n_vocab"])
        except CheckpointError:
            pass  # openai-whisper or transformers is not installed: the caller passes tokenizer=
    return source


# -- the shared check ----------------------------------------------------------------------------
def expected_shapes(dims: dict) -> dict[str, tuple]:
    """openai-whisper's state dict for ``dims``: every tensor's name and shape (whisper/model.py;
    its MLPs are 4 × wide, and its keys have no bias)."""
    a, t, shapes = dims["n_audio_state"], dims["n_text_state"], {}
    for name, d in (("encoder.conv1", a), ("encoder.conv2", a), ("encoder.ln_post", a), ("decoder.ln", t)):
        shapes[f"{name}.bias"] = (d,)
    shapes.update({"encoder.conv1.weight": (a, dims["n_mels"], 3), "encoder.conv2.weight": (a, a, 3),
                   "encoder.ln_post.weight": (a,), "decoder.ln.weight": (t,),
                   "encoder.positional_embedding": (dims["n_audio_ctx"], a),
                   "decoder.positional_embedding": (dims["n_text_ctx"], t),
                   "decoder.token_embedding.weight": (dims["n_vocab"], t)})
    for side, layers, d in (("encoder", dims["n_audio_layer"], a), ("decoder", dims["n_text_layer"], t)):
        for i in range(layers):
            block = f"{side}.blocks.{i}."
            for attention in ("attn", "cross_attn") if side == "decoder" else ("attn",):
                for linear in ("query", "key", "value", "out"):
                    shapes[f"{block}{attention}.{linear}.weight"] = (d, d)
                    if linear != "key":
                        shapes[f"{block}{attention}.{linear}.bias"] = (d,)
            for norm in ("attn_ln", "cross_attn_ln", "mlp_ln") if side == "decoder" else ("attn_ln", "mlp_ln"):
                shapes[f"{block}{norm}.weight"] = shapes[f"{block}{norm}.bias"] = (d,)
            shapes.update({f"{block}mlp.0.weight": (4 * d, d), f"{block}mlp.0.bias": (4 * d,),
                           f"{block}mlp.2.weight": (d, 4 * d), f"{block}mlp.2.bias": (d,)})
    return shapes


def check_dims(path, dims) -> dict:
    """``dims`` as a dict of ten positive ints of sane size, heads dividing widths."""
    if not isinstance(dims, dict) or set(dims) != set(DIMS):
        found = sorted(dims) if isinstance(dims, dict) else type(dims).__name__
        raise _error(path, f"dims are not openai-whisper's ModelDimensions ({found})")
    for key, value in dims.items():
        if type(value) is not int or not 0 < value <= (MAX_LAYERS if key.endswith("layer") else MAX_SIZE):
            raise _error(path, f"dims {key} = {value!r} is not a positive int of sane size")
    for side in ("audio", "text"):
        if dims[f"n_{side}_state"] % dims[f"n_{side}_head"]:
            raise _error(path, f"n_{side}_state {dims[f'n_{side}_state']} is not a multiple of "
                               f"n_{side}_head {dims[f'n_{side}_head']}")
    return dims


def check_shapes(path, dims: dict, shapes: dict[str, tuple], sources: dict[str, str] | None = None) -> None:
    """:class:`CheckpointError` unless ``shapes`` (openai names) is exactly the state dict of
    ``dims``; ``sources`` maps an openai name to the source's own, which the message names."""
    expected, sources = expected_shapes(check_dims(path, dims)), sources or {}
    for problem, names in (("missing", expected.keys() - shapes.keys()),
                           ("unexpected", shapes.keys() - expected.keys())):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise _error(path, f"{problem} tensor {sources.get(min(names), min(names))}{more}")
    for name, shape in shapes.items():
        if tuple(shape) != expected[name]:
            raise _error(path, f"tensor {sources.get(name, name)} has shape {list(shape)}, expected "
                               f"{list(expected[name])} for the model's dimensions")


def _checked(path, dims, weights: dict, sources=None, copy: bool = False) -> dict[str, torch.Tensor]:
    """``weights`` checked (:func:`check_shapes`), as float32 tensors that share no memory (safetensors
    refuses shared tensors; CTranslate2's aliases share); ``copy``: copy all (views of a mapped file,
    which would change with it)."""
    check_shapes(path, dims, {name: tuple(tensor.shape) for name, tensor in weights.items()}, sources)
    out, seen = {}, set()
    for name, tensor in weights.items():
        pointer = tensor.untyped_storage().data_ptr()
        out[name] = tensor.to(torch.float32, copy=copy or pointer in seen).contiguous()
        seen.add(pointer)
    return out


# -- CTranslate2 -------------------------------------------------------------------------------
def _ct2_layout(encoder_layers: int, decoder_layers: int) -> list[tuple[str, list[str]]]:
    """(CTranslate2 layer, the openai layers it holds): several where CTranslate2 fuses query, key
    and value (or key and value) along the output rows (ctranslate2/converters/transformers.py)."""
    layout = [("encoder/conv1", ["encoder.conv1"]), ("encoder/conv2", ["encoder.conv2"]),
              ("encoder/layer_norm", ["encoder.ln_post"]), ("decoder/layer_norm", ["decoder.ln"])]
    for side, count in (("encoder", encoder_layers), ("decoder", decoder_layers)):
        for i in range(count):
            c, o = f"{side}/layer_{i}/", f"{side}.blocks.{i}."
            layout += [(c + "self_attention/linear_0", [o + "attn.query", o + "attn.key", o + "attn.value"]),
                       (c + "self_attention/linear_1", [o + "attn.out"]),
                       (c + "self_attention/layer_norm", [o + "attn_ln"]),
                       (c + "ffn/linear_0", [o + "mlp.0"]), (c + "ffn/linear_1", [o + "mlp.2"]),
                       (c + "ffn/layer_norm", [o + "mlp_ln"])]
            if side == "decoder":
                layout += [(c + "attention/linear_0", [o + "cross_attn.query"]),
                           (c + "attention/linear_1", [o + "cross_attn.key", o + "cross_attn.value"]),
                           (c + "attention/linear_2", [o + "cross_attn.out"]),
                           (c + "attention/layer_norm", [o + "cross_attn_ln"])]
    return layout


def _read_ctranslate2(folder: Path) -> WhisperSource:
    model = read_model_bin(folder / "model.bin")
    path = model.path
    if (model.spec, model.revision) != ("WhisperSpec", 3):
        raise _error(path, f"a {model.spec or 'unnamed'} model of revision {model.revision}, "
                           "not WhisperSpec revision 3")

    def get(name):  # a variable, int8/int16 weights dequantized with their saved scale
        value = model.get(name)
        if not value.is_floating_point() and name.endswith("weight"):
            value = value.float() / model.get(f"{name}_scale").float().reshape(-1, *[1] * (value.dim() - 1))
        return value

    names = [*model.variables, *model.aliases]
    layers = {side: 1 + max((int(m[1]) for n in names if (m := re.match(rf"{side}/layer_(\d{{1,9}})/", n))), default=-1)
              for side in ("encoder", "decoder")}
    if max(layers.values()) > MAX_LAYERS:
        raise _error(path, f"variables name {max(layers.values())} layers, more than {MAX_LAYERS}")
    weights, sources = {}, {}
    for theirs, ours in _ct2_layout(layers["encoder"], layers["decoder"]):
        norm = theirs.endswith("layer_norm")
        for suffix, their_suffix in (("weight", "gamma" if norm else "weight"), ("bias", "beta" if norm else "bias")):
            name = f"{theirs}/{their_suffix}"
            value = get(name)
            if len(ours) > 1 and (value.dim() == 0 or len(value) % len(ours)):
                raise _error(path, f"variable {name} of shape {list(value.shape)} does not split into {len(ours)}")
            for part, chunk in zip(ours, value.chunk(len(ours)) if len(ours) > 1 else [value]):
                if suffix == "weight" or not part.endswith(".key"):  # a key bias adds one constant to a query's scores
                    weights[f"{part}.{suffix}"] = chunk.clone() if len(ours) > 1 else chunk
                    sources[f"{part}.{suffix}"] = name
            if len(ours) > 1 and name not in model.aliases.values():
                model.variables.pop(name, None)  # split into copies: memory stays that of the weights returned
    for ours, theirs in (("encoder.positional_embedding", "encoder/position_encodings/encodings"),
                         ("decoder.positional_embedding", "decoder/position_encodings/encodings"),
                         ("decoder.token_embedding.weight", "decoder/embeddings/weight")):
        weights[ours], sources[ours] = get(theirs), theirs
    tied = model.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight"
    if not tied and not torch.equal(get("decoder/projection/weight"), weights["decoder.token_embedding.weight"]):
        raise _error(path, "decoder/projection/weight is not tied to decoder/embeddings/weight "
                           "(openai-whisper ties them)")
    for ours, rank in (("encoder.conv1.weight", 3), ("decoder.token_embedding.weight", 2),
                       ("encoder.positional_embedding", 2), ("decoder.positional_embedding", 2)):
        if weights[ours].dim() != rank:
            raise _error(path, f"variable {sources[ours]} has shape {list(weights[ours].shape)}, not of rank {rank}")
    conv, embedding = weights["encoder.conv1.weight"], weights["decoder.token_embedding.weight"]
    dims = {"n_mels": conv.shape[1], "n_audio_ctx": len(weights["encoder.positional_embedding"]),
            "n_audio_state": len(conv), "n_audio_head": int(get("encoder/num_heads")),
            "n_audio_layer": layers["encoder"], "n_vocab": len(embedding),
            "n_text_ctx": len(weights["decoder.positional_embedding"]), "n_text_state": embedding.shape[1],
            "n_text_head": int(get("decoder/num_heads")), "n_text_layer": layers["decoder"]}
    weights = _checked(path, dims, weights, sources)
    config_path = folder / "config.json"
    config = _read_json(config_path, "CTranslate2 config") if config_path.exists() else {}
    return WhisperSource(dims, weights, _heads(config_path, config.get("alignment_heads"), dims),
                         _ids(config_path, config.get("suppress_ids"), dims),
                         _ids(config_path, config.get("suppress_ids_begin"), dims), _folder_tokenizer(folder),
                         "ctranslate2")


# -- openai-whisper .pt ------------------------------------------------------------------------
_OPENAI_DIMS = {  # (n_mels, n_vocab, n_audio_state, n_audio_layer, n_text_layer) of the models in _ALIGNMENT_HEADS
    "tiny.en": (80, 51864, 384, 4, 4), "tiny": (80, 51865, 384, 4, 4), "base.en": (80, 51864, 512, 6, 6),
    "base": (80, 51865, 512, 6, 6), "small.en": (80, 51864, 768, 12, 12), "small": (80, 51865, 768, 12, 12),
    "medium.en": (80, 51864, 1024, 24, 24), "medium": (80, 51865, 1024, 24, 24),
    "large-v1": (80, 51865, 1280, 32, 32), "large-v2": (80, 51865, 1280, 32, 32),
    "large-v3": (128, 51866, 1280, 32, 32), "large-v3-turbo": (128, 51866, 1280, 32, 4)}


def _read_openai(path: Path) -> WhisperSource:
    check_regular(path, "Whisper checkpoint", CheckpointError)  # a FIFO would block torch.load
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # UnpicklingError for a payload, RuntimeError for a corrupt zip, OSError, ...
        lines = [line for line in str(error).splitlines() if line.strip()] or [""]
        if lines[0].startswith("Weights only load failed"):  # torch's advice to unpickle anyway; the cause follows
            lines = lines[1:] or lines
        raise _error(path, f"not a safe openai-whisper checkpoint ({type(error).__name__}: {lines[0][:300]})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model_state_dict"), dict):
        raise _error(path, "not an openai-whisper checkpoint (no dims and model_state_dict)")
    dims, state = check_dims(path, checkpoint.get("dims")), checkpoint["model_state_dict"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise _error(path, "model_state_dict holds something other than named tensors")
    weights = _checked(path, dims, state, copy=True)  # copies, not views of the file
    return WhisperSource(dims, weights, _openai_heads(path, dims), None, None, None, "openai")


def _openai_heads(path: Path, dims: dict) -> list[tuple[int, int]] | None:
    """openai-whisper's alignment heads for the model of these dims (large-v1 and -v2 share dims
    and are told apart by the SHA-256 that openai-whisper's download URLs carry); None when the
    package is missing or no model matches."""
    try:
        import whisper
    except ImportError:
        return None
    key = tuple(dims[k] for k in ("n_mels", "n_vocab", "n_audio_state", "n_audio_layer", "n_text_layer"))
    names = [name for name, found in _OPENAI_DIMS.items() if found == key and name in whisper._ALIGNMENT_HEADS]
    if len({whisper._ALIGNMENT_HEADS[name] for name in names}) > 1:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 24), b""):
                digest.update(block)
        names = [name for name in names if digest.hexdigest() in whisper._MODELS.get(name, "")]
    if len(names) != 1:
        return None
    mask = gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[names[0]]))
    if len(mask) != dims["n_text_layer"] * dims["n_text_head"]:
        return None
    return [divmod(i, dims["n_text_head"]) for i, flag in enumerate(mask) if flag]


def tiktoken_tokenizer_json(n_vocab: int) -> bytes:
    """A ``tokenizers`` tokenizer.json that encodes as openai-whisper's tiktoken tokenizer for a model
    of ``n_vocab`` tokens (51864: English-only, 51865: multilingual, 51866: large-v3's 100
    languages): byte-level BPE with merges from the ranks (transformers' TikTokenConverter, offline)
    and the special tokens in openai-whisper's order (whisper/tokenizer.py ``get_encoding``).
    :class:`CheckpointError` when openai-whisper or transformers is missing or ``n_vocab`` is none
    of these."""
    try:
        import whisper.tokenizer
        from transformers.convert_slow_tokenizer import TikTokenConverter
    except ImportError as error:
        raise CheckpointError(f"cannot build Whisper's tokenizer without {error.name}; give a tokenizer.json") from None
    if n_vocab not in (51864, 51865, 51866):
        raise CheckpointError(f"no openai-whisper tokenizer has {n_vocab} tokens; give a tokenizer.json")
    languages = list(whisper.tokenizer.LANGUAGES)[:99 + (n_vocab == 51866)]
    specials = ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{code}|>" for code in languages],
                "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                "<|notimestamps|>", *[f"<|{i * 0.02:.2f}|>" for i in range(1501)]]

    class Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(vocab_file):  # not tiktoken's loader, which keeps copies in /tmp for all to change
            words = read_regular_file(vocab_file, MAX_JSON_BYTES, "tiktoken file", CheckpointError).split()
            return {base64.b64decode(token): int(rank) for token, rank in zip(words[::2], words[1::2])}

    name = "gpt2" if n_vocab == 51864 else "multilingual"
    vocab_file = Path(whisper.tokenizer.__file__).parent / "assets" / f"{name}.tiktoken"
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # get_encoding's
    converter = Converter(vocab_file=str(vocab_file), pattern=pattern, extra_special_tokens=specials)
    return converter.converted().to_str().encode()


# -- transformers ------------------------------------------------------------------------------
_HF_TOP = {"encoder.embed_positions.weight": "encoder.positional_embedding",
           "decoder.embed_positions.weight": "decoder.positional_embedding",
           "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
           "encoder.layer_norm.weight": "encoder.ln_post.weight", "encoder.layer_norm.bias": "encoder.ln_post.bias",
           "decoder.layer_norm.weight": "decoder.ln.weight", "decoder.layer_norm.bias": "decoder.ln.bias"}
_HF_PARTS = [(".self_attn_layer_norm.", ".attn_ln."), (".encoder_attn_layer_norm.", ".cross_attn_ln."),
             (".final_layer_norm.", ".mlp_ln."), (".self_attn.", ".attn."), (".encoder_attn.", ".cross_attn."),
             (".q_proj.", ".query."), (".k_proj.", ".key."), (".v_proj.", ".value."), (".out_proj.", ".out."),
             (".fc1.", ".mlp.0."), (".fc2.", ".mlp.2."), (".layers.", ".blocks.")]
_HF_SIZES = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
             "encoder_ffn_dim", "decoder_ffn_dim", "vocab_size", "num_mel_bins", "max_source_positions",
             "max_target_positions")


def _openai_name(hf_name: str) -> str:
    name = hf_name.removeprefix("model.")
    if name in _HF_TOP:
        return _HF_TOP[name]
    for theirs, ours in _HF_PARTS:
        name = name.replace(theirs, ours)
    return name


def _read_transformers(folder: Path) -> WhisperSource:
    from safetensors import safe_open

    config_path, path = folder / "config.json", folder / "model.safetensors"
    config = _read_json(config_path, "transformers config")
    if config.get("model_type") != "whisper":
        raise _error(config_path, f"model_type is {config.get('model_type')!r}, not 'whisper'")
    for key in _HF_SIZES:
        if type(config.get(key)) is not int:
            raise _error(config_path, f"{key} is {config.get(key)!r}, not an int")
    d = config["d_model"]
    for key in ("encoder_ffn_dim", "decoder_ffn_dim"):
        if config[key] != 4 * d:
            raise _error(config_path, f"{key} {config[key]} is not 4 × d_model {d}, as openai-whisper's dims imply")
    dims = check_dims(config_path, {
        "n_mels": config["num_mel_bins"], "n_audio_ctx": config["max_source_positions"], "n_audio_state": d,
        "n_audio_head": config["encoder_attention_heads"], "n_audio_layer": config["encoder_layers"],
        "n_vocab": config["vocab_size"], "n_text_ctx": config["max_target_positions"], "n_text_state": d,
        "n_text_head": config["decoder_attention_heads"], "n_text_layer": config["decoder_layers"]})
    if not path.is_file():
        found = sorted(p.name for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".json"}
                       and p.name.startswith(("pytorch_model", "model.safetensors")))
        held = f"; the folder holds {', '.join(found)}, which this reader does not read" if found else ""
        raise _error(path, f"missing{held}")
    try:
        with safe_open(str(path), framework="pt") as file:  # the header's shapes are checked before any tensor is read
            names = [name for name in file.keys() if name != "proj_out.weight"]
            sources = {_openai_name(name): name for name in names}
            if len(sources) != len(names):
                raise _error(path, "two tensors have the same name but for the prefix model.")
            shapes = {_openai_name(name): tuple(file.get_slice(name).get_shape()) for name in names}
            check_shapes(path, dims, shapes, sources)
            weights = {_openai_name(name): file.get_tensor(name) for name in names}  # views of the mapped file
            if "proj_out.weight" in file.keys() and not torch.equal(file.get_tensor("proj_out.weight").float(),
                                                                    weights["decoder.token_embedding.weight"].float()):
                raise _error(path, "proj_out.weight is not tied to model.decoder.embed_tokens.weight "
                                   "(openai-whisper ties them)")
            weights = _checked(path, dims, weights, sources, copy=True)
    except CheckpointError:
        raise
    except Exception as error:  # SafetensorError, OSError, ... for a truncated or foreign file
        raise _error(path, f"corrupt safetensors ({' '.join(str(error).split())[:300]})") from None
    generation_path = folder / "generation_config.json"
    generation = _read_json(generation_path, "generation config") if generation_path.exists() else {}
    ids_path, ids = (generation_path, generation) if generation else (config_path, config)  # older configs keep them
    return WhisperSource(dims, weights, _heads(generation_path, generation.get("alignment_heads"), dims),
                         _ids(ids_path, ids.get("suppress_tokens"), dims),
                         _ids(ids_path, ids.get("begin_suppress_tokens"), dims),
                         _folder_tokenizer(folder), "transformers")


# -- small readers -------------------------------------------------------------------------------
def _error(path, reason: str) -> CheckpointError:
    return CheckpointError(f"{escape(os.fspath(path))}: {escape(reason)}")  # tensor names may hold newlines


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(read_regular_file(path, MAX_JSON_BYTES, what, CheckpointError))
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _error(path, f"corrupt {what} ({' '.join(str(error).split())[:200]})") from None
    if not isinstance(data, dict):
        raise _error(path, f"corrupt {what} (a JSON {type(data).__name__}, not an object)")
    return data


def _read_tokenizer(path: Path) -> bytes:
    data = read_regular_file(path, MAX_JSON_BYTES, "tokenizer.json", CheckpointError)
    try:
        ok = isinstance(json.loads(data).get("model"), dict)
    except (ValueError, RecursionError, AttributeError):
        ok = False
    if not ok:
        raise _error(path, "not a tokenizers tokenizer.json (no JSON object with a model)")
    return data


def _folder_tokenizer(folder: Path) -> bytes | None:
    return _read_tokenizer(folder / "tokenizer.json") if (folder / "tokenizer.json").exists() else None


def _ids(path, ids, dims) -> list[int] | None:
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(type(i) is int and 0 <= i < dims["n_vocab"] for i in ids):
        raise _error(path, f"suppressed ids are not a list of token ids below {dims['n_vocab']}")
    return ids


def _heads(path, heads, dims) -> list[tuple[int, int]] | None:
    if heads is None:
        return None
    layers, count = dims["n_text_layer"], dims["n_text_head"]
    if not isinstance(heads, list) or not all(isinstance(h, list) and len(h) == 2 and all(type(x) is int for x in h)
                                              and 0 <= h[0] < layers and 0 <= h[1] < count for h in heads):
        raise _error(path, f"alignment_heads are not [layer, head] pairs of the {layers} × {count} decoder")
    return [tuple(h) for h in heads]
