"""``mmseq export CHECKPOINT --format transformers --out DIR``: an imported (and perhaps
fine-tuned) Whisper written back as a transformers ``WhisperForConditionalGeneration`` folder, the
reverse of :mod:`mmseq.importers.whisper`.

* ``model.safetensors``: the weights in transformers' names, each fused query-key-value (or
  key-value) projection split again, the output projection tied to the token embedding. The key
  biases are dropped, as transformers' and openai-whisper's keys have none: the import fills them
  with zeros and fine-tuning in mmseq trains them, but a bias ``b`` added to every key adds the
  same ``q · b`` to all of a query's scores, which softmax ignores, so dropping it changes no
  output (``tests/test_whisper_equality.py`` checks this with random biases).
* ``config.json``; ``generation_config.json`` (``decoder_start_token_id``, the ``eos`` and ``pad``
  ids, ``suppress_tokens``, ``begin_suppress_tokens``, ``alignment_heads``,
  ``no_timestamps_token_id``, ``max_initial_timestamp_index``, ``max_length``,
  ``is_multilingual``, and for a multilingual model ``lang_to_id``, ``task_to_id`` and the route's
  language and task, so that transformers' default prompt is the route's);
  ``preprocessor_config.json`` (``WhisperFeatureExtractor``: 80 or 128 mels, the 30-s window);
  ``tokenizer.json`` (copied) and ``tokenizer_config.json``. ``from_pretrained(DIR)`` of
  ``WhisperForConditionalGeneration`` and ``WhisperProcessor`` loads the folder.

transformers pads every input to the 30-s window, as Whisper was trained (an mmseq Whisper set
to pad less does not). The folder is JSON and safetensors only, written without transformers,
atomically (:func:`mmseq.checkpoint.write_folder`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..checkpoint import write_folder
from ..errors import CheckpointError

SAMPLE_RATE, HOP, N_FFT = 16000, 160, 400


def transformers_weights(model, route) -> dict[str, torch.Tensor]:
    """The weights of ``model``'s Whisper ``route`` in transformers' names; a
    :class:`CheckpointError` naming any weight that has no place there (a CTC head, LoRA adapters)."""
    state = model.state_dict()
    used, out = set(), {}

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return state[name]

    def copy(ours: str, theirs: str) -> None:
        for kind in ("weight", "bias"):
            out[f"{theirs}.{kind}"] = take(f"{ours}.{kind}")

    def split(ours: str, theirs: str, parts: tuple[str, ...]) -> None:  # the fused rows, in order
        weights, biases = take(ours + ".weight").chunk(len(parts)), take(ours + ".bias").chunk(len(parts))
        for part, weight, bias in zip(parts, weights, biases):
            out[f"{theirs}.{part}.weight"] = weight
            if part != "k_proj":  # softmax ignores a key bias (see the module)
                out[f"{theirs}.{part}.bias"] = bias

    encoder = next(name for name, module in model.encoders.items() if module is route.encoder)
    ours, theirs = f"encoders.{encoder}.", "model.encoder."
    copy(ours + "conv1", theirs + "conv1")
    copy(ours + "conv2", theirs + "conv2")
    out[theirs + "embed_positions.weight"] = take(ours + "positional_embedding")
    copy(ours + "ln_post", theirs + "layer_norm")
    for i in range(len(route.encoder.blocks)):
        block, layer = f"{ours}blocks.{i}.", f"{theirs}layers.{i}."
        split(block + "qkv", layer + "self_attn", ("q_proj", "k_proj", "v_proj"))
        for a, b in (("out", "self_attn.out_proj"), ("attn_ln", "self_attn_layer_norm"), ("mlp.0", "fc1"),
                     ("mlp.2", "fc2"), ("mlp_ln", "final_layer_norm")):
            copy(block + a, layer + b)
    theirs = "model.decoder."
    out[theirs + "embed_tokens.weight"] = take("decoder.embed.weight")
    out[theirs + "embed_positions.weight"] = take("decoder.positions.weight")
    copy("decoder.norm", theirs + "layer_norm")
    for i in range(len(model.decoder.layers)):
        block, layer = f"decoder.layers.{i}.", f"{theirs}layers.{i}."
        split(block + "self_qkv", layer + "self_attn", ("q_proj", "k_proj", "v_proj"))
        split(block + "cross_kv", layer + "encoder_attn", ("k_proj", "v_proj"))
        for a, b in (("self_out", "self_attn.out_proj"), ("self_norm", "self_attn_layer_norm"),
                     ("cross_q", "encoder_attn.q_proj"), ("cross_out", "encoder_attn.out_proj"),
                     ("cross_norm", "encoder_attn_layer_norm"), ("ffn.0", "fc1"), ("ffn.3", "fc2"),
                     ("ffn_norm", "final_layer_norm")):
            copy(block + a, layer + b)
    left = sorted(set(state) - used)
    if left:
        more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
        raise CheckpointError(f"weight {left[0]}{more} has no place in transformers' Whisper: export a model "
                              "without it")
    # Copies, contiguous: safetensors refuses tensors that share memory (the parts of a fused projection do).
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in out.items()}


def _check(model, route) -> None:
    from ..encoders.whisper import WhisperEncoder

    decoder = model.decoder.config
    problems = []
    if not isinstance(route.encoder, WhisperEncoder):
        problems.append(f"route {route.name!r} has a {type(route.encoder).__name__}, not the whisper encoder")
    elif route.encoder.output_dim != decoder.dim or (decoder.memory_dim or decoder.dim) != decoder.dim:
        problems.append(f"the encoder's width {route.encoder.output_dim} is not the decoder's {decoder.dim}")
    if decoder.ffn_dim != 4 * decoder.dim or decoder.scale_embedding:
        problems.append("the decoder is not Whisper's (ffn_dim 4 x dim, token vectors unscaled)")
    if getattr(model.tokenizer, "kind", None) != "bpe":
        problems.append(f"the tokenizer is {getattr(model.tokenizer, 'kind', '?')}, not Whisper's bpe")
    if model.prompt_tuning is not None or model.decoder.soft_prompt is not None:
        problems.append("it is prompt-tuned: its soft prompt has no place in transformers' Whisper")
    if problems:
        raise CheckpointError(f"not an mmseq Whisper that transformers can run: {problems[0]}")


def _configs(model, route) -> tuple[dict, dict, dict, dict]:
    """``config.json``, ``generation_config.json``, ``preprocessor_config.json`` and
    ``tokenizer_config.json`` of the exported folder."""
    from ..decoding.options import DecodingOptions

    tokenizer, decoder, encoder = model.tokenizer, model.decoder.config, route.encoder
    decoding = DecodingOptions(**{**asdict(model.decoding), **route.decoding})
    eos, start = tokenizer.eos_id, tokenizer.bos_id
    dim, positions, n_mels = decoder.dim, encoder.positional_embedding.shape[0], encoder.conv1.in_channels
    dtype = str(model.decoder.embed.weight.dtype).removeprefix("torch.")
    config = {
        "architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
        "vocab_size": tokenizer.vocab_size, "num_mel_bins": n_mels, "d_model": dim, "encoder_layers": len(encoder.blocks),
        "encoder_attention_heads": encoder.blocks[0].heads if len(encoder.blocks) else decoder.heads,
        "decoder_layers": decoder.layers, "decoder_attention_heads": decoder.heads, "encoder_ffn_dim": 4 * dim,
        "decoder_ffn_dim": 4 * dim, "max_source_positions": positions, "max_target_positions": decoder.max_length,
        "activation_function": "gelu", "scale_embedding": False, "tie_word_embeddings": True,
        "is_encoder_decoder": True, "use_cache": True, "dropout": 0.0, "attention_dropout": 0.0,
        "activation_dropout": 0.0, "pad_token_id": eos, "bos_token_id": eos, "eos_token_id": eos,
        "decoder_start_token_id": start, "suppress_tokens": list(decoding.suppress_tokens),
        "begin_suppress_tokens": list(decoding.suppress_at_start), "dtype": dtype}
    generation = {key: config[key] for key in ("decoder_start_token_id", "bos_token_id", "eos_token_id",
                                               "pad_token_id", "suppress_tokens", "begin_suppress_tokens")}
    generation["max_length"] = decoder.max_length
    if decoder.alignment_heads:
        generation["alignment_heads"] = [list(map(int, head)) for head in decoder.alignment_heads]
    if tokenizer.no_timestamps_id is not None:
        generation["no_timestamps_token_id"] = tokenizer.no_timestamps_id
    if decoding.max_initial_timestamp is not None:
        generation["max_initial_timestamp_index"] = round(decoding.max_initial_timestamp / tokenizer.timestamp_step)
    languages = {token: tokenizer.token_id(token) for token in tokenizer.slots.get("language", [])}
    generation["is_multilingual"] = bool(languages)
    if languages:
        tasks = {token.strip("<|>"): tokenizer.token_id(token) for token in tokenizer.slots.get("task", [])}
        generation.update(lang_to_id=languages, task_to_id=tasks)
        prompt = route.task.prompt()
        for key, ids in (("language", languages), ("task", tasks)):
            chosen = [name for name, i in ids.items() if i in prompt]
            if chosen:
                generation[key] = chosen[0]
    samples = positions * 2 * HOP
    preprocessor = {
        "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "WhisperProcessor",
        "feature_size": n_mels, "sampling_rate": SAMPLE_RATE, "hop_length": HOP, "n_fft": N_FFT,
        "chunk_length": samples // SAMPLE_RATE if samples % SAMPLE_RATE == 0 else samples / SAMPLE_RATE,
        "n_samples": samples, "nb_max_frames": samples // HOP, "padding_side": "right", "padding_value": 0.0,
        "return_attention_mask": False}
    end = tokenizer.roles["eos"]
    tokenizer_config = {"tokenizer_class": "WhisperTokenizer", "processor_class": "WhisperProcessor",
                        "bos_token": end, "eos_token": end, "unk_token": end, "pad_token": end,
                        "add_prefix_space": False, "errors": "replace", "model_max_length": 1024}
    return config, generation, preprocessor, tokenizer_config


def export_whisper_transformers(model_or_folder, out: str | os.PathLike, task: str | None = None) -> Path:
    """Write the Whisper ``model_or_folder`` (a :class:`~mmseq.model.Seq2Seq` or its checkpoint
    folder, from ``mmseq import whisper`` and perhaps fine-tuned) as the transformers folder
    ``out`` (see the module); ``task``: its route, for a model of several. Returns ``out``.
    :class:`CheckpointError` for a model transformers' Whisper cannot hold."""
    from safetensors.torch import save_file

    if isinstance(model_or_folder, (str, os.PathLike)):
        from ..checkpoint import load
        model = load(model_or_folder, "cpu")
    else:
        model = model_or_folder
    route = model.route(task, "asr")
    _check(model, route)
    weights = transformers_weights(model, route)
    config, generation, preprocessor, tokenizer_config = _configs(model, route)

    def write(folder: Path) -> None:
        save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        for name, content in (("config.json", config), ("generation_config.json", generation),
                              ("preprocessor_config.json", preprocessor), ("tokenizer_config.json", tokenizer_config)):
            (folder / name).write_text(json.dumps(content, indent=2) + "\n")
        model.tokenizer.save(folder)  # tokenizer.json

    return write_folder(out, write)
