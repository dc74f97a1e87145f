"""PyTorch against the ONNX export (onnxruntime) on a speech checkpoint and manifest: are the
hypotheses the same, and how fast is each on CPU?

    python tools/bench_onnx.py exp/synth_speech/best data/synth_speech/test.jsonl --threads 1

Exports the checkpoint (into ``--out``, default a temporary folder), decodes the manifest's audio
in the same length-sorted batches with both, greedy and beam (attention alone: the export has no
CTC prefix scorer), and prints a table: identical hypotheses, seconds (wall and CPU of this
process), utterances per second, and the ONNX / PyTorch speed ratio. Other jobs on the machine
change wall times; the ratios within one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch


def batches(waveforms: list[np.ndarray], size: int):
    order = sorted(range(len(waveforms)), key=lambda i: -len(waveforms[i]))
    for start in range(0, len(order), size):
        chunk = order[start:start + size]
        lengths = np.array([len(waveforms[i]) for i in chunk], np.int64)
        inputs = np.zeros((len(chunk), int(lengths.max())), np.float32)
        for row, i in enumerate(chunk):
            inputs[row, : lengths[row]] = waveforms[i]
        yield chunk, inputs, lengths


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("manifest")
    parser.add_argument("--out", help="export folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1, help="threads of PyTorch and of onnxruntime")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()

    from mmseq.checkpoint import load
    from mmseq.exporters.onnx import export_onnx
    from mmseq.inference.onnx_runner import OnnxModel

    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="mmseq-onnx-"))
    _, export_wall, export_cpu = timed(lambda: export_onnx(args.checkpoint, out))
    print(f"export: {export_wall:.1f} s wall, {export_cpu:.1f} s CPU -> {out}")
    model = load(args.checkpoint, "cpu")
    runner = OnnxModel(out, threads=args.threads)
    folder = Path(args.manifest).parent
    lines = [json.loads(line) for line in Path(args.manifest).read_text().splitlines() if line.strip()]
    waveforms = [soundfile.read(str(folder / line["audio"]), dtype="float32")[0] for line in lines]
    seconds = sum(len(w) for w in waveforms) / model.encoder.sample_rate
    print(f"{len(waveforms)} utterances, {seconds:.0f} s of audio, batches of {args.batch_size}, "
          f"{args.threads} thread(s)\n")

    print("| search | hypotheses equal | PyTorch s (wall / CPU) | ONNX s (wall / CPU) | PyTorch utt/s | ONNX utt/s | ONNX speed / PyTorch (CPU) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for beam in args.beams:
        def run_torch():
            found = {}
            for chunk, inputs, lengths in batches(waveforms, args.batch_size):
                batch = {"inputs": torch.from_numpy(inputs), "lengths": torch.from_numpy(lengths)}
                for i, hyps in zip(chunk, model.generate(batch, beam_size=beam, ctc_weight=0.0)):
                    found[i] = hyps[0].tokens
            return found

        def run_onnx():
            found = {}
            for chunk, inputs, lengths in batches(waveforms, args.batch_size):
                for i, hyps in zip(chunk, runner.generate(inputs, lengths, beam_size=beam)):
                    found[i] = hyps[0].tokens
            return found

        run_torch(), run_onnx()  # warm up (allocations, onnxruntime's first runs)
        reference, torch_wall, torch_cpu = timed(run_torch)
        ours, onnx_wall, onnx_cpu = timed(run_onnx)
        same = sum(reference[i] == ours[i] for i in reference)
        name = "greedy" if beam == 1 else f"beam {beam}"
        print(f"| {name} | {same}/{len(reference)} | {torch_wall:.2f} / {torch_cpu:.2f} | {onnx_wall:.2f} / {onnx_cpu:.2f} "
              f"| {len(reference) / torch_wall:.1f} | {len(ours) / onnx_wall:.1f} | {torch_cpu / onnx_cpu:.2f} |")


if __name__ == "__main__":
    main()
