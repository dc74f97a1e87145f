"""recipes/librispeech/run.sh end to end on a toy LibriSpeech: the real layout (FLAC files and
``<speaker>-<chapter>.trans.txt`` in upper case under ``LibriSpeech/<split>/<speaker>/<chapter>/``),
spoken by espeak-ng, trained with a tiny config override, averaged and scored on the four
evaluation splits. The recipe is known to run before anyone spends GPU hours on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPLITS = {"train-clean-100": 6, "dev-clean": 2, "dev-other": 2, "test-clean": 2, "test-other": 2}  # per chapter
WORDS = "THE CAT SAT ON A RED MAT AND A DOG RAN TO THE BIG GREEN TREE".split()
# Sized to train in seconds on one core: the recipe's every step, not its accuracy, is under test.
TINY = ["tokenizer.type=char", "model.encoder.n_mels=16", "model.encoder.dim=32", "model.encoder.layers=1",
        "model.encoder.heads=2", "model.encoder.ffn_dim=64", "model.encoder.conv_kernel=3",
        "model.encoder.subsampling_channels=8", "model.encoder.specaugment=null", "model.decoder.dim=32",
        "model.decoder.layers=1", "model.decoder.heads=2", "model.decoder.ffn_dim=64", "data.batch_size=20",
        "data.num_workers=0", "trainer.max_epochs=3", "trainer.warmup_steps=2", "trainer.checkpoint_every=0",
        "trainer.keep_best=2", "trainer.precision=fp32", "trainer.log_every=1", "decoding.beam_size=2"]


def speak(text: str, path: Path, voice: str) -> None:
    """espeak-ng's WAV (22.05 kHz) as a 16 kHz FLAC, as LibriSpeech ships."""
    import soundfile
    import torch
    import torchaudio

    wav = path.with_suffix(".wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True, capture_output=True)
    samples, rate = soundfile.read(wav, dtype="float32")
    soundfile.write(path, torchaudio.functional.resample(torch.from_numpy(samples), rate, 16000).numpy(), 16000,
                    format="FLAC")
    wav.unlink()


def make_toy_librispeech(root: Path) -> dict[str, list[str]]:
    """``root/LibriSpeech/<split>/<speaker>/<chapter>/`` for every split, two speakers of one chapter
    each; returns each split's utterance ids."""
    ids = {}
    for split_index, (split, count) in enumerate(SPLITS.items()):
        ids[split] = []
        for speaker_index, (speaker, voice) in enumerate(((19 + split_index, "en-us"), (103 + split_index, "en-gb"))):
            chapter = 1240 + speaker_index
            folder = root / "LibriSpeech" / split / str(speaker) / str(chapter)
            folder.mkdir(parents=True)
            lines = []
            for number in range(count):
                utterance = f"{speaker}-{chapter}-{number:04d}"
                start = (3 * number + 5 * speaker_index + split_index) % len(WORDS)
                text = " ".join((WORDS * 2)[start:start + 3 + number % 3])
                speak(text, folder / f"{utterance}.flac", voice)
                lines.append(f"{utterance} {text}")
                ids[split].append(utterance)
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return ids


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_run_sh_goes_from_a_librispeech_tree_to_the_results_table(tmp_path):
    ids = make_toy_librispeech(tmp_path / "corpora")
    exp = tmp_path / "exp"
    env = dict(os.environ, LIBRISPEECH=str(tmp_path / "corpora"), DATA=str(tmp_path / "manifests"),
               PYTHON=sys.executable, NPROC="1", AVERAGE="best:2", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.monotonic()
    result = subprocess.run(["bash", str(ROOT / "recipes/librispeech/run.sh"), f"output_dir={exp}", *TINY],
                            env=env, capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"run.sh on the toy tree: {seconds:.0f} s")

    # Stage 1: manifests in the recipe's layout, text lowercased, audio found.
    for split, utterances in ids.items():
        rows = [json.loads(line) for line in (tmp_path / "manifests" / f"{split}.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in rows) == sorted(utterances)
        assert all(r["text"] == r["text"].lower() and Path(r["audio"]).is_file() for r in rows)
    # Stages 2 and 3: three epochs' checkpoints, the best two averaged into a loadable checkpoint.
    assert (exp / "log.csv").is_file() and (exp / "average" / "model.safetensors").is_file()
    assert "averaged 2 checkpoints" in result.stdout
    # Stage 4: every evaluation split scored, all its utterances, and the table written.
    table = (exp / "results.md").read_text()
    for split in ("dev-clean", "dev-other", "test-clean", "test-other"):
        metrics = json.loads((exp / "eval" / split / "metrics.json").read_text())
        assert metrics["examples"] == len(ids[split]) and metrics["skipped"] == 0
        assert f"| {split} | {metrics['wer']:.2f} |" in table
    assert table in result.stdout

    # The same corpus through Lhotse's own LibriSpeech recipe, as a CutSet: the averaged model
    # scores it exactly as it scores prepare.py's manifest.
    pytest.importorskip("lhotse")
    from lhotse import CutSet
    from lhotse.recipes import prepare_librispeech

    parts = prepare_librispeech(tmp_path / "corpora" / "LibriSpeech", dataset_parts=["dev-other"],
                                output_dir=tmp_path / "lhotse", normalize_text="lower")
    cuts = tmp_path / "lhotse" / "cuts_dev-other.jsonl.gz"
    CutSet.from_manifests(**parts["dev-other"]).to_file(cuts)
    lhotse_out = tmp_path / "eval-lhotse"
    subprocess.run([sys.executable, "-m", "mmseq", "eval", str(exp / "average"), str(cuts), "--out", str(lhotse_out)],
                   env=env, check=True, capture_output=True)
    from_cuts = json.loads((lhotse_out / "metrics.json").read_text())
    from_jsonl = json.loads((exp / "eval" / "dev-other" / "metrics.json").read_text())
    assert from_cuts == from_jsonl
    hypotheses = [sorted((row["hypothesis"], row["references"]) for row in map(json.loads, (tmp_path / folder /
                  "hypotheses.jsonl").read_text().splitlines())) for folder in ("eval-lhotse", "exp/eval/dev-other")]
    assert hypotheses[0] == hypotheses[1]  # (Lhotse's cut ids add a suffix to the utterance ids)
