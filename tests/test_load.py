"""Load: ``mmseq transcribe`` and ``mmseq caption`` on 1,000 files at once. Inputs are streamed in
chunks (memory bounded by the chunk, not by the number of files) and batched; the broken files
among them are reported, one line each, and every other file gets its result.

The files, checkpoints and output checks come from tools/bench_load.py, which also measures the
peak memory of the same runs in their own processes (the slow test here, and the figures in
docs/reliability.md).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mmseq import cli
from mmseq.errors import InputError
from mmseq.inference.run import iter_results

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_load.py"
FILES = 1000


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_load", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def work(bench, tmp_path_factory):
    folder = tmp_path_factory.mktemp("load")
    speech, caption = bench.make_checkpoints(folder / "checkpoints", image_model="test_convnext", image_size=32)
    return {"speech": speech, "caption": caption,
            "audio": bench.make_audio_files(folder / "audio", FILES, seconds=0.3),
            "images": bench.make_image_files(folder / "images", FILES, size=32)}


@pytest.mark.parametrize("kind", ["transcribe", "caption"])
def test_a_thousand_files_on_the_command_line(kind, bench, work, capsys):
    checkpoint, files, broken = ((work["speech"], work["audio"], bench.BROKEN_AUDIO) if kind == "transcribe"
                                 else (work["caption"], work["images"], bench.BROKEN_IMAGES))
    code = cli.main([kind, str(checkpoint), *map(str, files), "--batch-size", "32", "--device", "cpu"])
    out, err = capsys.readouterr()
    counts = bench.check_outputs({"stdout": out, "stderr": err, "returncode": code}, files, broken)
    assert counts == {"results": FILES - 3, "errors": 3, "all_results_kept": True, "every_error_named": True,
                      "exit_code": 1}


@pytest.mark.parametrize("kind", ["speech", "caption"])
def test_streaming_holds_at_most_one_chunk_of_inputs(kind, work, monkeypatch):
    """Count the inputs loaded but not yet answered: never more than ``chunk_size``."""
    import mmseq

    model = mmseq.load(work[kind])
    files = work["audio" if kind == "speech" else "images"]
    loaded = 0
    real_load = model.route().task.load_input

    def counting_load(source, training=False):
        nonlocal loaded
        loaded += 1
        return real_load(source, training)

    monkeypatch.setattr(model.route().task, "load_input", counting_load)
    answered, held, errors = set(), 0, 0
    for index, result in ((r.index, r.error or r.text) for r in iter_results(model, files, batch_size=32, chunk_size=100)):
        assert index not in answered
        answered.add(index)
        errors += isinstance(result, InputError)
        held = max(held, loaded - len(answered))
    assert answered == set(range(FILES)) and errors == 3
    assert held <= 100


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_files(bench, tmp_path):
    """In their own processes: the peak RSS of 1,000 files is within 200 MiB of that of 100."""
    rows = []
    for count in (100, FILES):
        rows += bench.bench(count, tmp_path, seconds=1.0, image_size=64, image_model="resnet18", batch_size=16)
    for row in rows:
        assert row["all_results_kept"] and row["every_error_named"] and row["exit_code"] == 1
    for kind in ("transcribe", "caption"):
        small, large = [row["peak_mib"] for row in rows if row["command"] == kind]
        assert large < small + 200, rows
