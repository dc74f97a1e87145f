"""How long SCST's CIDEr-D reward takes for a batch of 50 images x 5 samples, beside the model's own
work on the same batch (sampling, the teacher-forced forward pass, the backward pass).

    python tools/bench_reward.py --manifest data/synth_caption/train.jsonl --checkpoint exp/synth_caption/best
    python tools/bench_reward.py --manifest data/coco/train.jsonl --config recipes/coco/resnet101_xe.yaml --device cuda

The references (and the document frequencies, computed once and timed) come from --manifest. The
candidates are sampled by the model of --checkpoint, or, with --config (a randomly initialized model
of that config), taken from other training images' captions so that they read like captions. The
images of the batch are the manifest's first ones when they can be read, random pixels otherwise.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmseq.metrics.cider import CiderD
from mmseq.data.manifest import read_manifest
from mmseq.errors import InputError
from mmseq.training.scst import SCSTConfig, draw_candidates, reward_text, sequence_log_probs


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default="data/synth_caption/train.jsonl", help="training caption manifest")
    parser.add_argument("--checkpoint", help="a caption checkpoint folder (its samples are the candidates)")
    parser.add_argument("--config", default="recipes/synth_caption/config.yaml",
                        help="without --checkpoint: a config whose model is built with random weights")
    parser.add_argument("--images", type=int, default=50, help="images per batch (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=5, help="candidates per image (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats; the median is shown")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build_model(arguments, captions: list[str], folder: Path):
    """The checkpoint's model, or the config's model with random weights and its tokenizer trained
    on ``captions`` (into ``folder``)."""
    from dataclasses import asdict

    from mmseq.model import Seq2Seq

    from mmseq.checkpoint import load
    from mmseq.tokenizer import train_tokenizer

    if arguments.checkpoint:
        return load(arguments.checkpoint, arguments.device)
    from mmseq.config import load_config

    config = load_config(arguments.config)
    config.model.encoder.update(pretrained=False, pretrained_file=None)
    settings = asdict(config.tokenizer)
    tokenizer = train_tokenizer(settings.pop("type"), captions, out=folder / "tokenizer.model", **settings)
    return Seq2Seq(config.model, tokenizer, config.task, asdict(config.decoding)).to(arguments.device)


def image_batch(model, examples: list[dict], count: int, device) -> torch.Tensor:
    try:
        images = [model.route().task.load_input(example["image"], training=True) for example in examples[:count]]
        return torch.stack(images).to(device)
    except InputError:
        size = model.encoder.data_config()["input_size"]
        return torch.randn(count, *size, device=device)


def timed(function, repeats: int, device) -> tuple[float, object]:
    """Median wall time of ``function()`` in seconds, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    random.seed(arguments.seed)
    torch.manual_seed(arguments.seed)
    examples, _ = read_manifest(arguments.manifest, ("image", "captions"))
    if len(examples) < arguments.images:
        raise SystemExit(f"{arguments.manifest}: {len(examples)} images, fewer than --images {arguments.images}")
    references = [[reward_text(caption) for caption in example["captions"]] for example in examples]

    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cider_df.json"
        start = time.perf_counter()
        scorer = CiderD(references, cache_path=cache)
        computed = time.perf_counter() - start
        start = time.perf_counter()
        CiderD(references, cache_path=cache)
        loaded = time.perf_counter() - start
        model = build_model(arguments, [c for example in examples for c in example["captions"]], Path(folder))
    model.train()
    device = model.device
    count, images = arguments.samples, arguments.images
    batch_examples = random.sample(examples, images)
    indices = [examples.index(example) for example in batch_examples for _ in range(count)]
    inputs = image_batch(model, batch_examples, images, device)
    settings = SCSTConfig(enabled=True, init_from="-", count=count).check()

    prompt = model.route().task.prompt()
    prefix = torch.tensor([model.tokenizer.bos_id] + prompt, device=device)
    with torch.no_grad():
        memory, memory_mask = model.encode(inputs, None)
    sample_time, new = timed(lambda: draw_candidates(model, memory, memory_mask, prompt, settings),
                             arguments.repeats, device)
    if arguments.checkpoint:
        candidates = [reward_text(model.tokenizer.decode(row)) for row in new.tolist()]
    else:  # a random model's samples are noise: score captions of other images instead
        candidates = [random.choice(references[random.randrange(len(references))]) for _ in indices]
        new = torch.nn.utils.rnn.pad_sequence(
            [torch.tensor(model.tokenizer.encode(text) + [model.tokenizer.eos_id]) for text in candidates],
            batch_first=True, padding_value=model.tokenizer.eos_id).to(device)
    tokens = torch.cat([prefix.expand(new.shape[0], -1), new], 1)

    def forward():
        memory, memory_mask = model.encode(inputs, None)
        logits = model.decoder(tokens[:, :-1], memory.repeat_interleave(count, 0), memory_mask.repeat_interleave(count, 0))
        return sequence_log_probs(logits[:, len(prefix) - 1:], new, model.tokenizer.eos_id).sum()

    def forward_backward():
        model.zero_grad(set_to_none=True)
        forward().backward()

    with torch.no_grad():
        forward_time, _ = timed(forward, arguments.repeats, device)
    backward_time, _ = timed(forward_backward, arguments.repeats, device)
    # The first time an image is met its references' vectors are built (then kept): time both.
    first_time, _ = timed(lambda: scorer.reward(candidates, indices), 1, device)
    reward_time, rewards = timed(lambda: scorer.reward(candidates, indices), arguments.repeats, device)

    step = sample_time + backward_time + reward_time
    source = arguments.checkpoint or f"{arguments.config} (random weights)"
    print(f"model: {source} on {device}; torch threads {torch.get_num_threads()}")
    print(f"references: {len(examples)} training images from {arguments.manifest}; document frequencies "
          f"computed in {computed:.2f} s, read back from the cache in {loaded:.2f} s")
    print(f"batch: {images} images x {count} candidates = {len(candidates)} captions, "
          f"{sum(len(c.split()) for c in candidates) / len(candidates):.1f} words each, "
          f"mean CIDEr-D {rewards.mean():.3f}; median of {arguments.repeats} runs")
    rows = [("CIDEr-D reward", reward_time), ("CIDEr-D reward, images met for the first time", first_time),
            ("model forward (encoder + teacher-forced decoder)", forward_time),
            ("model forward + backward", backward_time), ("sampling the candidates (no gradient)", sample_time)]
    for name, seconds in rows:
        print(f"  {name:<50} {seconds * 1000:9.1f} ms")
    print(f"  reward / forward pass: {reward_time / forward_time:.2f}x; "
          f"reward share of an SCST step (sample + forward/backward + reward): {100 * reward_time / step:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
