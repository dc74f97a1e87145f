"""Real speech with reference transcripts, from public repositories, as mmseq manifests.

Three small English sets, each written as 16-kHz mono 16-bit WAV files and a JSON Lines manifest
``<out>/<set>/manifest.jsonl`` with ``{"id", "audio" (relative to the manifest), "text",
"duration", "speaker"}`` (Common Voice lines also carry ``age``, ``gender`` and ``accent`` when
the clip's row has them), plus ``<out>/<set>/SOURCE.json`` saying where every file came from:

- ``cv100``: 100 Common Voice English (v6.1) clips by 99 speakers, from
  github:rigved/rit-engl-682-spring-2021-project: ``data/common_voice_en_*.wav`` (already 16 kHz
  mono PCM; Common Voice itself ships mp3, so these carry mp3 artefacts) and ``validated.csv``,
  matched on its ``path`` column; the text is its ``sentence`` column; the speaker its
  ``client_id``. Every clip must find its row.
- ``ljspeech``: the LJSpeech clips in github:coqui-ai/TTS ``tests/data/ljspeech/`` (``wavs/*.wav``,
  22.05 kHz, resampled here with soxr); the text is ``metadata.csv``'s third (normalized) column.
  That file holds 8 of the 32 clips' lines since 2021 ("reduce size of the metadata.csv used at
  testing"); given the git directory, the other clips' lines are taken from the file's earlier
  versions in the same repository (newest first; the 8 kept lines are identical in both). From a
  plain folder only the clips of the folder's metadata.csv are written.
- ``librivox``: five utterances of one LibriVox reading (Sense and Sensibility, chapter 1) in
  github:cmusphinx/pocketsphinx ``test/data/librivox/``: ``<fileid>.wav`` (16 kHz) and
  ``<fileid>.txt`` (lower case, no punctuation), checked against the ``transcription`` file.

Each source may be a bare git directory (what ``fetch`` returns; HEAD is read with ``git
archive``), a checkout of the repository, or the data folder itself. With no source at all the
tool only reads the sets already under ``--out`` and checks them (files present, 16 kHz mono,
durations as written, manifest readable by :func:`mmseq.data.manifest.read_manifest`)::

    python tools/real_speech.py --cv /work/.mirror/rigved+rit-engl-682-spring-2021-project/repo \\
        --ljspeech /work/.mirror/coqui-ai+TTS/repo --librivox /work/.mirror/cmusphinx+pocketsphinx/repo \\
        --out data/real
    python tools/real_speech.py --out data/real          # read and check what is there
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATE = 16_000
SETS = ("cv100", "ljspeech", "librivox")
# Where each set's files sit inside its repository.
SUBPATHS = {"cv100": ("data", "validated.csv"), "ljspeech": ("tests/data/ljspeech",),
            "librivox": ("test/data/librivox",)}
# A file that says a folder is the data folder itself.
MARKERS = {"cv100": "validated.csv", "ljspeech": "metadata.csv", "librivox": "fileids"}
AUDIO_PREFERENCE = (".wav", ".flac", ".mp3")  # lossless first when a clip comes in several forms


class DataError(RuntimeError):
    pass


# -- sources ---------------------------------------------------------------------------------

def is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def git(git_dir: Path, *args: str, binary: bool = False):
    result = subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, check=True)
    return result.stdout if binary else result.stdout.decode("utf-8")


class Source:
    """A repository's files for one set: extracted from a git directory into a temporary folder, or
    a folder on disk. ``folder`` is the set's data folder; ``describe()`` says where it came from."""

    def __init__(self, path: str | os.PathLike, name: str):
        self.path = Path(path).expanduser().resolve()
        self.name = name
        self.git_dir: Path | None = None
        self.commit: str | None = None
        self._temp: tempfile.TemporaryDirectory | None = None
        if is_git_dir(self.path):
            self.git_dir = self.path
        elif (self.path / ".git").is_dir() and is_git_dir(self.path / ".git"):
            self.git_dir = self.path / ".git"
        if self.git_dir is not None:
            self.commit = git(self.git_dir, "rev-parse", "HEAD").strip()
        self.folder = self._locate()

    def _locate(self) -> Path:
        subpaths = SUBPATHS[self.name]
        if self.git_dir is not None and self.git_dir == self.path:  # bare: extract HEAD's files
            self._temp = tempfile.TemporaryDirectory(prefix=f"real_speech_{self.name}_")
            archive = git(self.git_dir, "archive", "--format=tar", "HEAD", "--", *subpaths, binary=True)
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(self._temp.name, filter="data")
            root = Path(self._temp.name)
        else:
            root = self.path
        base = root if self.name == "cv100" else root / subpaths[0]
        if (base / MARKERS[self.name]).is_file():
            return base
        if (root / MARKERS[self.name]).is_file():  # the data folder itself was given
            return root
        raise DataError(f"{self.name}: no {MARKERS[self.name]} under {self.path} (looked in {base})")

    def history(self, relative: str) -> list[tuple[str, str]]:
        """(commit, text) of every committed version of ``relative`` (a path in the repository),
        newest first; empty without a git directory."""
        if self.git_dir is None:
            return []
        versions = []
        for commit in git(self.git_dir, "rev-list", "HEAD", "--", relative).split():
            try:
                versions.append((commit, git(self.git_dir, "show", f"{commit}:{relative}")))
            except subprocess.CalledProcessError:  # the commit that deleted it
                continue
        return versions

    def describe(self) -> dict:
        return {"path": str(self.path), "git_dir": str(self.git_dir) if self.git_dir else None,
                "commit": self.commit, "subpaths": list(SUBPATHS[self.name])}

    def close(self):
        if self._temp is not None:
            self._temp.cleanup()


# -- audio -----------------------------------------------------------------------------------

def read_16k_mono(path: Path) -> tuple[np.ndarray, dict]:
    """A file's samples as float32 mono at 16 kHz, and what it was (rate, channels, format)."""
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    info = sf.info(str(path))
    was = {"rate": rate, "channels": samples.shape[1], "format": f"{info.format}/{info.subtype}"}
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(mono), was


def write_wav(path: Path, samples: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    # libsndfile wraps rather than clips out-of-range floats when it writes PCM: clip first.
    sf.write(str(path), np.clip(samples, -1.0, 32767 / 32768), RATE, subtype="PCM_16", format="WAV")


def pick_audio(folder: Path, stem: str) -> Path | None:
    for suffix in AUDIO_PREFERENCE:
        if (folder / (stem + suffix)).is_file():
            return folder / (stem + suffix)
    return None


def clean_text(text: str) -> str:
    return " ".join(text.split())


# -- the sets: each returns [(id, audio path, fields)] and notes -----------------------------

def collect_cv100(source: Source) -> tuple[list, list[str]]:
    folder = source.folder
    with open(folder / "validated.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    by_path = {}
    for row in rows:
        if row["path"] in by_path:
            raise DataError(f"cv100: validated.csv lists {row['path']} twice")
        by_path[row["path"]] = row
    audio = sorted((folder / "data").glob("common_voice_en_*.*"))
    stems = sorted({p.stem for p in audio if p.suffix.lower() in AUDIO_PREFERENCE})
    items, missing, notes = [], [], []
    for stem in stems:
        path = pick_audio(folder / "data", stem)
        row = by_path.get(path.name) or by_path.get(stem + ".mp3") or by_path.get(stem + ".wav")
        if row is None:
            missing.append(path.name)
            continue
        fields = {"text": clean_text(row["sentence"]), "speaker": row["client_id"]}
        for extra in ("age", "gender", "accent"):
            if row.get(extra, "").strip():
                fields[extra] = row[extra].strip()
        items.append((stem, path, fields))
    if missing:
        raise DataError(f"cv100: {len(missing)} clips have no row in validated.csv: {missing[:5]}")
    unused = sorted(set(by_path) - {path.name for _, path, _ in items})
    if unused:
        notes.append(f"{len(unused)} validated.csv rows have no audio file: {unused[:5]}")
    return items, notes


def parse_ljspeech_metadata(text: str) -> dict[str, str]:
    """id -> normalized text (third column; the second when a line has only two)."""
    lines = {}
    for line in text.splitlines():
        parts = line.rstrip("\r").split("|")
        if len(parts) >= 2 and parts[0].strip():
            lines[parts[0].strip()] = clean_text(parts[2] if len(parts) >= 3 else parts[1])
    return lines


def collect_ljspeech(source: Source, history: bool = True) -> tuple[list, list[str]]:
    folder = source.folder
    texts = parse_ljspeech_metadata((folder / "metadata.csv").read_text(encoding="utf-8"))
    origin = {clip: "HEAD" for clip in texts}
    notes = []
    if history:
        relative = f"{SUBPATHS['ljspeech'][0]}/metadata.csv"
        for commit, content in source.history(relative):
            for clip, text in parse_ljspeech_metadata(content).items():
                if clip not in texts:
                    texts[clip], origin[clip] = text, commit
                elif origin[clip] == "HEAD" and texts[clip] != text:
                    notes.append(f"{clip}: metadata.csv at {commit[:8]} differs from HEAD (HEAD kept)")
    stems = sorted({p.stem for p in (folder / "wavs").iterdir() if p.suffix.lower() in AUDIO_PREFERENCE})
    items, untexted = [], []
    for stem in stems:
        if stem not in texts:
            untexted.append(stem)
            continue
        items.append((stem, pick_audio(folder / "wavs", stem),
                      {"text": texts[stem], "speaker": "ljspeech", "_text_from": origin[stem]}))
    from_history = sorted({origin[s] for s, _, _ in items} - {"HEAD"})
    if from_history:
        count = sum(origin[s] != "HEAD" for s, _, _ in items)
        notes.append(f"{count} of {len(items)} texts from earlier versions of metadata.csv "
                     f"(commits {', '.join(c[:8] for c in from_history)}); the rest from HEAD")
    if untexted:
        notes.append(f"{len(untexted)} clips without a metadata.csv line left out: {untexted[:5]}...")
    return items, notes


def collect_librivox(source: Source) -> tuple[list, list[str]]:
    folder = source.folder
    fileids = [line.strip() for line in (folder / "fileids").read_text().splitlines() if line.strip()]
    transcription = {}
    if (folder / "transcription").is_file():
        for line in (folder / "transcription").read_text().splitlines():
            match = re.match(r"\s*(?:<s>)?(.*?)(?:</s>)?\s*\(([^)]+)\)\s*$", line)
            if match:
                transcription[match.group(2)] = clean_text(match.group(1))
    items, notes = [], []
    for fileid in fileids:
        path = pick_audio(folder, fileid)
        txt = folder / f"{fileid}.txt"
        if path is None or not (txt.is_file() or fileid in transcription):
            notes.append(f"{fileid}: no audio or no transcript, left out")
            continue
        text = clean_text(txt.read_text()) if txt.is_file() else transcription[fileid]
        if fileid in transcription and transcription[fileid] != text:
            notes.append(f"{fileid}: .txt and transcription differ ({text!r} vs {transcription[fileid]!r}); .txt kept")
        # One recording (one LibriVox reader); the recording's name stands for the reader.
        items.append((fileid, path, {"text": text, "speaker": fileid.rsplit("-", 1)[0]}))
    return items, notes


COLLECT = {"cv100": collect_cv100, "ljspeech": collect_ljspeech, "librivox": collect_librivox}


# -- writing and reading sets ----------------------------------------------------------------

def build(name: str, source: Source, out: Path, history: bool = True) -> dict:
    items, notes = (collect_ljspeech(source, history) if name == "ljspeech" else COLLECT[name](source))
    if not items:
        raise DataError(f"{name}: no clips with a transcript under {source.folder}")
    folder = out / name
    lines, inputs, text_origin = [], {}, {}
    for clip, path, fields in items:
        samples, was = read_16k_mono(path)
        if samples.size == 0:
            raise DataError(f"{name}: {path} is empty")
        relative = f"wavs/{clip}.wav"
        write_wav(folder / relative, samples)
        key = f"{Path(path).suffix} {was['format']} {was['rate']} Hz {was['channels']} ch"
        inputs[key] = inputs.get(key, 0) + 1
        text_from = fields.pop("_text_from", None)
        line = {"id": clip, "audio": relative, "text": fields.pop("text"),
                "duration": round(samples.size / RATE, 4), **fields}
        lines.append(line)
        if text_from is not None:
            text_origin[clip] = text_from
    stale = {p.name for p in (folder / "wavs").glob("*.wav")} - {Path(l["audio"]).name for l in lines}
    for file in stale:  # clips of an earlier run that this one did not write
        (folder / "wavs" / file).unlink()
    manifest = folder / "manifest.jsonl"
    temporary = manifest.with_suffix(".jsonl.tmp")
    temporary.write_text("".join(json.dumps(l, ensure_ascii=False) + "\n" for l in lines), encoding="utf-8")
    os.replace(temporary, manifest)
    record = {"set": name, "source": source.describe(), "data_folder": str(source.folder) if source._temp is None else "git archive of HEAD",
              "input_audio": inputs, "resampler": f"soxr {soxr.__version__} HQ",
              "written": "16 kHz mono PCM_16 WAV", "clips": len(lines), "notes": notes}
    if text_origin:
        record["text_from_commit"] = text_origin  # ljspeech: which metadata.csv version gave each text
    (folder / "SOURCE.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def check(name: str, out: Path) -> dict:
    """Read a written set back: every file there, 16 kHz mono, its duration as the manifest says;
    the manifest readable by mmseq. Returns its figures."""
    from mmseq.data.manifest import read_manifest

    manifest = out / name / "manifest.jsonl"
    examples, _ = read_manifest(manifest, required=("id", "audio", "text", "duration"))
    durations, speakers, problems = [], set(), []
    for example in examples:
        info = sf.info(example["audio"])
        if info.samplerate != RATE or info.channels != 1:
            problems.append(f"{example['id']}: {info.samplerate} Hz, {info.channels} channels")
        if abs(info.frames / RATE - example["duration"]) > 1e-3:
            problems.append(f"{example['id']}: {info.frames / RATE:.4f} s on disk, {example['duration']} in manifest")
        durations.append(example["duration"])
        speakers.add(example.get("speaker"))
    if problems:
        raise DataError(f"{manifest}: " + "; ".join(problems[:5]))
    total = float(sum(durations))
    return {"set": name, "manifest": str(manifest), "clips": len(durations),
            "speakers": len(speakers - {None}), "total_s": round(total, 2),
            "mean_s": round(total / len(durations), 2), "min_s": round(min(durations), 2),
            "max_s": round(max(durations), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cv", help="rigved/rit-engl-682-spring-2021-project: git dir, checkout or data folder")
    parser.add_argument("--ljspeech", help="coqui-ai/TTS: git dir, checkout or tests/data/ljspeech")
    parser.add_argument("--librivox", help="cmusphinx/pocketsphinx: git dir, checkout or test/data/librivox")
    parser.add_argument("--out", default="data/real", help="where the sets go (default data/real)")
    parser.add_argument("--no-history", action="store_true",
                        help="ljspeech: only the clips of HEAD's metadata.csv (8), not its earlier versions")
    args = parser.parse_args(argv)
    out = Path(args.out)
    given = {"cv100": args.cv, "ljspeech": args.ljspeech, "librivox": args.librivox}
    for name, path in given.items():
        if path is None:
            continue
        source = Source(path, name)
        try:
            record = build(name, source, out, history=not args.no_history)
        finally:
            source.close()
        print(f"{name}: wrote {record['clips']} clips from {record['source']['path']} "
              f"(commit {record['source']['commit'] or '-'}); input audio {record['input_audio']}")
        for note in record["notes"]:
            print(f"  note: {note}")
    present = [name for name in SETS if (out / name / "manifest.jsonl").is_file()]
    if not present:
        print(f"no sets under {out}; give --cv, --ljspeech or --librivox", file=sys.stderr)
        return 1
    print(f"{'set':10} {'clips':>5} {'speakers':>8} {'total s':>8} {'mean s':>6} {'min s':>5} {'max s':>5}  manifest")
    for name in present:
        s = check(name, out)
        print(f"{name:10} {s['clips']:5d} {s['speakers']:8d} {s['total_s']:8.1f} {s['mean_s']:6.2f} "
              f"{s['min_s']:5.2f} {s['max_s']:5.2f}  {s['manifest']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
