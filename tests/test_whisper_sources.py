"""Whisper checkpoints in their three forms (CTranslate2 folder, openai-whisper .pt, transformers
folder) read to the same openai-named float32 weights, and untrusted files refused in one line.

One tiny random Whisper made with transformers is saved in every form: as is, by CTranslate2's own
converter (float32, float16, int8) and as an openai .pt written here with a mapping of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

from mmseq.errors import CheckpointError
from mmseq.importers.ctranslate2 import read_model_bin
from mmseq.importers.whisper_sources import _openai_heads, read_whisper, tiktoken_tokenizer_json

transformers = pytest.importorskip("transformers")

BASE_CT2 = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmseq" / "whisper-base-ct2"
BASE_DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 512, "n_audio_head": 8, "n_audio_layer": 6,
             "n_vocab": 51865, "n_text_ctx": 448, "n_text_state": 512, "n_text_head": 8, "n_text_layer": 6}
BASE_HEADS = [(3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6)]
TINY = dict(vocab_size=300, num_mel_bins=80, encoder_layers=2, decoder_layers=2, d_model=64, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, max_source_positions=1500,
            max_target_positions=448, pad_token_id=250, bos_token_id=250, eos_token_id=250, decoder_start_token_id=251,
            suppress_tokens=[1, 2, 7], begin_suppress_tokens=[220, 250])
TINY_DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 4, "n_audio_layer": 2,
             "n_vocab": 300, "n_text_ctx": 448, "n_text_state": 64, "n_text_head": 4, "n_text_layer": 2}


def openai_state(hf: dict) -> dict:
    """transformers' Whisper state dict in openai-whisper's names (written out here, not shared
    with the reader, so that a mistake in one is not repeated in the other)."""
    out = {"encoder.positional_embedding": hf["model.encoder.embed_positions.weight"],
           "decoder.positional_embedding": hf["model.decoder.embed_positions.weight"],
           "decoder.token_embedding.weight": hf["model.decoder.embed_tokens.weight"]}
    for kind in ("weight", "bias"):
        out[f"encoder.conv1.{kind}"] = hf[f"model.encoder.conv1.{kind}"]
        out[f"encoder.conv2.{kind}"] = hf[f"model.encoder.conv2.{kind}"]
        out[f"encoder.ln_post.{kind}"] = hf[f"model.encoder.layer_norm.{kind}"]
        out[f"decoder.ln.{kind}"] = hf[f"model.decoder.layer_norm.{kind}"]
    parts = {"self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
             "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln", "fc1": "mlp.0", "fc2": "mlp.2",
             "final_layer_norm": "mlp_ln", "encoder_attn.q_proj": "cross_attn.query",
             "encoder_attn.k_proj": "cross_attn.key",
             "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
             "encoder_attn_layer_norm": "cross_attn_ln"}
    for side in ("encoder", "decoder"):
        for i in range(2):
            for theirs, ours in parts.items():
                for kind in ("weight", "bias"):
                    name = f"model.{side}.layers.{i}.{theirs}.{kind}"
                    if name in hf:
                        out[f"{side}.blocks.{i}.{ours}.{kind}"] = hf[name]
    return {name: tensor.detach().clone() for name, tensor in out.items()}


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """The tiny Whisper's transformers model, its openai state dict, and its folders and files."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    root = tmp_path_factory.mktemp("whisper")
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**TINY)).eval()
    with torch.no_grad():  # random everything, layer norms left at 1 and 0 so that CTranslate2 aliases them
        for name, parameter in model.named_parameters():
            if "layer_norm" not in name:
                parameter.normal_(0, 0.02)
    model.generation_config.alignment_heads = [[1, 0], [1, 3]]
    model.save_pretrained(root / "hf")
    vocab = {f"t{i}": i for i in range(250)}
    vocab.update({"<|endoftext|>": 250, "<|startoftranscript|>": 251, "<|en|>": 252, "<|transcribe|>": 253})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<|endoftext|>")
    tokenizer.save_pretrained(root / "hf")
    state = openai_state(model.state_dict())
    torch.save({"dims": TINY_DIMS, "model_state_dict": state}, root / "tiny.pt")
    paths = {"hf": root / "hf", "pt": root / "tiny.pt"}
    try:
        import ctranslate2
    except ImportError:
        ctranslate2 = None
    for quantization in (None, "float16", "int8") if ctranslate2 else ():
        out = root / f"ct2-{quantization or 'float32'}"
        ctranslate2.converters.TransformersConverter(str(root / "hf")).convert(str(out), quantization=quantization)
        paths[f"ct2-{quantization or 'float32'}"] = out
    return model, state, paths


def ct2_path(forms, kind="ct2-float32") -> Path:
    if kind not in forms[2]:
        pytest.skip("ctranslate2 is not installed")
    return forms[2][kind]


def one_line_error(path, match: str, **kwargs) -> str:
    with pytest.raises(CheckpointError) as caught:
        read_whisper(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and match in message, message
    return message


# -- the three forms read alike ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["hf", "pt", "ct2-float32", "ct2-float16", "ct2-int8"])
def test_every_form_reads_to_the_models_own_weights(forms, kind):
    model, state, paths = forms
    path = paths[kind] if kind in ("hf", "pt") else ct2_path(forms, kind)
    source = read_whisper(path)
    assert source.dims == TINY_DIMS
    assert source.origin == {"hf": "transformers", "pt": "openai"}.get(kind, "ctranslate2")
    assert set(source.weights) == set(state)
    tolerance = {"ct2-float16": dict(rtol=1e-3, atol=1e-4), "ct2-int8": dict(rtol=0, atol=1e-3)}
    tolerance = tolerance.get(kind, dict(rtol=0, atol=0))  # exact but for CTranslate2's float16 and int8
    for name, tensor in source.weights.items():
        assert tensor.dtype == torch.float32 and tensor.is_contiguous(), name
        torch.testing.assert_close(tensor, state[name], **tolerance, msg=name)
    storages = {tensor.untyped_storage().data_ptr() for tensor in source.weights.values()}
    assert len(storages) == len(source.weights)  # none shared (CTranslate2 aliases, fuses q/k/v); safetensors refuses
    if kind == "pt":  # openai-whisper's files say nothing of these; the tiny dims match no model of theirs
        assert (source.alignment_heads, source.suppress_tokens, source.suppress_blank_ids) == (None, None, None)
        assert source.tokenizer_json is None  # 300 tokens: no openai-whisper tokenizer to build
    else:  # CTranslate2's converter misses transformers 5's alignment heads and writes the last half's
        config = json.loads((path / ("generation_config.json" if kind == "hf" else "config.json")).read_text())
        assert source.alignment_heads == [tuple(h) for h in config["alignment_heads"]]
        assert kind != "hf" or source.alignment_heads == [(1, 0), (1, 3)]
        assert source.suppress_tokens == [1, 2, 7] and source.suppress_blank_ids == [220, 250]
    if kind == "hf":
        assert json.loads(source.tokenizer_json)["model"]["type"] == "WordLevel"


@pytest.mark.parametrize("kind, name", [("hf", "model.safetensors"), ("pt", None)])
def test_weights_are_copies_not_views_of_the_file(forms, tmp_path, kind, name):
    """safetensors and torch.load(mmap=True) give views of the mapped file: the reader copies."""
    source_path = forms[2][kind]
    path = shutil.copytree(source_path, tmp_path / "copy") if name else shutil.copy(source_path, tmp_path / "copy.pt")
    weights = read_whisper(path).weights
    file = Path(path) / name if name else Path(path)
    with open(file, "r+b") as handle:  # overwritten in place, as a later download or training run might
        handle.write(bytes(file.stat().st_size))
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, forms[1][name], rtol=0, atol=0, msg=name)


def test_the_weights_run_in_openai_whisper_as_in_transformers(forms):
    """The read weights in openai-whisper's own model give transformers' logits: the mapping is
    right in substance, not just in names."""
    whisper_model = pytest.importorskip("whisper.model")
    model, _, paths = forms
    source = read_whisper(paths["hf"])
    ours = whisper_model.Whisper(whisper_model.ModelDimensions(**source.dims)).eval()
    ours.load_state_dict(source.weights, strict=True)
    torch.manual_seed(1)
    mel, tokens = torch.randn(1, 80, 3000), torch.tensor([[251, 252, 253, 5, 17, 42]])
    with torch.no_grad():
        expected = model(input_features=mel, decoder_input_ids=tokens).logits
        torch.testing.assert_close(ours(mel, tokens), expected, rtol=1e-4, atol=1e-4)


def test_model_bin_is_read_without_ctranslate2(forms):
    folder = ct2_path(forms)
    code = ("import sys; sys.modules['ctranslate2'] = None; from mmseq.importers.whisper_sources import read_whisper; "
            f"print(read_whisper({str(folder)!r}).dims['n_text_layer'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stdout.strip() == "2", done.stderr[-2000:]


# -- tokenizers ----------------------------------------------------------------------------------
TEXTS = ["Hello world, this is a test.", " Ça va? Très bien!", "日本語のテキストです。", "Привет, как дела?",
         "  multiple   spaces\n\nnew lines\t tab", "it's we'll 12345 3.14 $100", "emoji 🎉🚀 ok",
         "Grüße aus Köln – „Zitat“", "مرحبا بالعالم", "한국어 문장입니다"]


@pytest.mark.parametrize("n_vocab", [51865, 51864, 51866])
def test_tokenizer_built_from_tiktoken_encodes_as_openai_whisper(n_vocab):
    whisper_tokenizer = pytest.importorskip("whisper.tokenizer")
    from tokenizers import Tokenizer

    built = Tokenizer.from_str(tiktoken_tokenizer_json(n_vocab).decode())
    multilingual = n_vocab >= 51865  # openai-whisper's Whisper.num_languages below
    reference = whisper_tokenizer.get_tokenizer(multilingual, num_languages=n_vocab - 51765 - multilingual).encoding
    assert built.get_vocab_size() == reference.n_vocab
    for text in TEXTS + ["<|endoftext|> inside text"]:
        ids = built.encode(text, add_special_tokens=False).ids
        assert ids == reference.encode(text, allowed_special="all"), text
        assert built.decode(ids, skip_special_tokens=False) == text
    for token in reference.special_tokens_set:
        assert built.token_to_id(token) == reference.encode_single_token(token), token
    assert (built.token_to_id("<|yue|>") is not None) == (n_vocab == 51866)
    if n_vocab == 51865 and (BASE_CT2 / "tokenizer.json").is_file():  # the same ids as faster-whisper's base
        theirs = json.loads((BASE_CT2 / "tokenizer.json").read_text())["added_tokens"]
        renamed = {"<|nocaptions|>": "<|nospeech|>"}  # transformers' older name of the same token
        assert all(built.token_to_id(renamed.get(t["content"], t["content"])) == t["id"] for t in theirs)


def test_openai_pt_gets_a_built_or_given_tokenizer(forms, tmp_path):
    pytest.importorskip("whisper")
    _, state, paths = forms
    state = dict(state, **{"decoder.token_embedding.weight": torch.randn(51865, 64)})
    torch.save({"dims": dict(TINY_DIMS, n_vocab=51865), "model_state_dict": state}, tmp_path / "multilingual.pt")
    source = read_whisper(tmp_path / "multilingual.pt")
    added = {t["content"]: t["id"] for t in json.loads(source.tokenizer_json)["added_tokens"]}
    assert added["<|startoftranscript|>"] == 50258 and added["<|30.00|>"] == 51864
    given = read_whisper(tmp_path / "multilingual.pt", tokenizer=paths["hf"])  # a folder holding tokenizer.json
    assert given.tokenizer_json == (paths["hf"] / "tokenizer.json").read_bytes()


def test_openai_alignment_heads_by_dims(tmp_path):
    pytest.importorskip("whisper")
    assert _openai_heads(tmp_path / "unused.pt", BASE_DIMS) == BASE_HEADS
    (tmp_path / "large.pt").write_bytes(b"not large-v1 nor large-v2")  # same dims: told apart by hash, here neither
    large = dict(BASE_DIMS, n_audio_state=1280, n_text_state=1280, n_audio_head=20, n_text_head=20,
                 n_audio_layer=32, n_text_layer=32)
    assert _openai_heads(tmp_path / "large.pt", large) is None


# -- untrusted model.bin -----------------------------------------------------------------------
def parse_bin(data: bytes):
    """(version, spec, revision, [(name, shape, dtype code, raw bytes)], [(alias, target)])."""
    at = 0

    def take(fmt):
        nonlocal at
        values = struct.unpack_from("<" + fmt, data, at)
        at += struct.calcsize("<" + fmt)
        return values

    def string():
        nonlocal at
        (length,) = take("H")
        at += length
        return data[at - length:at - 1].decode()

    (version,), spec, (revision,) = take("I"), string(), take("I")
    records = []
    for _ in range(take("I")[0]):
        name, (rank,) = string(), take("B")
        shape, (code, size) = take(f"{rank}I"), take("BI")
        records.append((name, shape, code, data[at:at + size]))
        at += size
    aliases = [(string(), string()) for _ in range(take("I")[0])]
    return version, spec, revision, records, aliases


def write_bin(path: Path, version, spec, revision, records, aliases, sizes=None) -> Path:
    def string(text):
        return struct.pack("<H", len(text.encode()) + 1) + text.encode() + b"\0"

    out = [struct.pack("<I", version), string(spec), struct.pack("<II", revision, len(records))]
    for name, shape, code, raw in records:
        size = (sizes or {}).get(name, len(raw))
        out += [string(name), struct.pack(f"<B{len(shape)}IBI", len(shape), *shape, code, size), raw]
    out.append(struct.pack("<I", len(aliases)))
    out += [string(alias) + string(target) for alias, target in aliases]
    path.mkdir(exist_ok=True)
    (path / "model.bin").write_bytes(b"".join(out))
    return path


@pytest.fixture
def bad(forms, tmp_path):
    """A copy of the float32 CTranslate2 folder, to be spoilt, and its model.bin parsed."""
    folder = shutil.copytree(ct2_path(forms), tmp_path / "ct2")
    return folder, parse_bin((folder / "model.bin").read_bytes())


def quick_and_small(path, match: str):
    """The error comes at once and without allocating what the header promises."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        message = one_line_error(path, match)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5 and peak < 32 * 2**20, (time.perf_counter() - start, peak)
    return message


def test_truncated_model_bin(bad):
    folder, _ = bad
    data = (folder / "model.bin").read_bytes()
    (folder / "model.bin").write_bytes(data[:len(data) // 2])  # in the middle of some variable
    message = quick_and_small(folder, "truncated")
    assert str(folder / "model.bin") in message


@pytest.mark.parametrize("shape, size", [((100000, 100000, 100000), 2**32 - 1),  # 4 PB by its shape
                                         ((2**30 - 1,), 4 * (2**30 - 1))])      # 4 GB, shape and size agreeing
def test_model_bin_header_promising_terabytes(bad, shape, size):
    folder, (version, spec, revision, records, aliases) = bad
    records = [("encoder/conv1/weight", shape, 0, b"")] + records
    write_bin(folder, version, spec, revision, records, aliases, sizes={"encoder/conv1/weight": size})
    message = quick_and_small(folder, "encoder/conv1/weight")
    assert "bytes" in message and str(folder / "model.bin") in message


def test_model_bin_header_promising_billions_of_variables(bad):
    folder, (version, spec, *_rest) = bad
    (folder / "model.bin").write_bytes(struct.pack("<I", version) + struct.pack("<H", len(spec) + 1) + spec.encode()
                                       + b"\0" + struct.pack("<II", 3, 2**32 - 1))
    quick_and_small(folder, "promises 4294967295 variables")


def test_model_bin_unknown_dtype(bad):
    folder, (version, spec, revision, records, aliases) = bad
    records = [(n, s, 9 if n == "encoder/conv2/weight" else c, r) for n, s, c, r in records]
    write_bin(folder, version, spec, revision, records, aliases)
    quick_and_small(folder, "encoder/conv2/weight has unknown dtype code 9")


def test_model_bin_missing_variable(bad):
    folder, (version, spec, revision, records, aliases) = bad
    records = [r for r in records if r[0] != "decoder/layer_1/ffn/linear_0/bias"]
    assert not any(target == "decoder/layer_1/ffn/linear_0/bias" for _, target in aliases)
    write_bin(folder, version, spec, revision, records, aliases)
    one_line_error(folder, "missing variable decoder/layer_1/ffn/linear_0/bias")


def test_model_bin_misshapen_variable(bad):
    folder, (version, spec, revision, records, aliases) = bad
    name = "encoder/layer_0/self_attention/linear_1/weight"
    records = [(n, (32, 128) if n == name else s, c, r) for n, s, c, r in records]  # same bytes, wrong shape
    message = one_line_error(write_bin(folder, version, spec, revision, records, aliases), name)
    assert "[32, 128]" in message and "[64, 64]" in message


def test_model_bin_naming_a_million_layers(bad):
    folder, (version, spec, revision, records, aliases) = bad
    records = [("encoder/layer_999999/ffn/linear_0/bias" if n == "encoder/layer_1/ffn/linear_0/bias" else n, s, c, r)
               for n, s, c, r in records]
    quick_and_small(write_bin(folder, version, spec, revision, records, aliases), "name 1000000 layers")


def test_model_bin_of_another_model(bad):
    folder, (version, _, revision, records, aliases) = bad
    one_line_error(write_bin(folder, version, "TransformerSpec", revision, records, aliases), "not WhisperSpec")


# -- untrusted .pt and transformers folders --------------------------------------------------------
class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_openai_pt_with_a_pickle_payload_is_refused_unrun(forms, tmp_path):
    _, state, _ = forms
    marker = tmp_path / "payload-ran"
    torch.save({"dims": TINY_DIMS, "model_state_dict": state, "extra": Payload(marker)}, tmp_path / "evil.pt")
    message = one_line_error(tmp_path / "evil.pt", "not a safe openai-whisper checkpoint")
    assert str(tmp_path / "evil.pt") in message
    assert not marker.exists()


def test_openai_pt_with_wrong_shapes_is_refused(forms, tmp_path):
    _, state, _ = forms
    torch.save({"dims": dict(TINY_DIMS, n_text_ctx=100), "model_state_dict": state}, tmp_path / "wrong.pt")
    one_line_error(tmp_path / "wrong.pt", "decoder.positional_embedding has shape [448, 64], expected [100, 64]")


@pytest.mark.parametrize("change, match", [
    ({"max_source_positions": 1000}, "model.encoder.embed_positions.weight has shape [1500, 64], expected [1000, 64]"),
    ({"vocab_size": 301}, "model.decoder.embed_tokens.weight has shape [300, 64], expected [301, 64]"),
    ({"decoder_layers": 3}, "missing tensor decoder.blocks.2."),
    ({"encoder_ffn_dim": 128}, "encoder_ffn_dim 128 is not 4 × d_model 64"),
])
def test_transformers_folder_disagreeing_with_its_config(forms, tmp_path, change, match):
    folder = shutil.copytree(forms[2]["hf"], tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    message = one_line_error(folder, match)
    assert str(folder) in message


# -- the real thing ------------------------------------------------------------------------------
@pytest.mark.skipif(not (BASE_CT2 / "model.bin").is_file(), reason="tools/fetch_whisper.py has not been run")
def test_real_whisper_base_ct2_folder():
    model = read_model_bin(BASE_CT2 / "model.bin", float32=False)
    assert (model.spec, model.revision, len(model.variables)) == ("WhisperSpec", 3, 212)
    assert model.variables["decoder/embeddings/weight"].dtype == torch.float16
    del model
    source = read_whisper(BASE_CT2)
    assert source.dims == BASE_DIMS and source.origin == "ctranslate2"
    assert source.alignment_heads == BASE_HEADS
    assert source.suppress_blank_ids == [220, 50257] and 50362 in source.suppress_tokens
    assert all(t.dtype == torch.float32 for t in source.weights.values())
    assert json.loads(source.tokenizer_json)["added_tokens"][0]["content"] == "<|endoftext|>"
