"""Make a synthetic English speech corpus with espeak-ng, for training and testing speech recognition offline.

Sentences are real English from three Debian packages, fetched with `apt-get download` into --out/sources
(the packages are unpacked there, not installed): WordNet 3.0's glosses and usage examples (wordnet-base)
for train, valid and test; The Devil's Dictionary (dict-devil) for test_other, a test from another source
that training never saw; GCIDE's definitions (dict-gcide) only for the language model's text. They are
normalised as ASR transcripts (see normalise). Each sentence is spoken by a random espeak-ng voice and
variant at a random speed and pitch, resampled to 16 kHz mono, given a random gain and, on some of them,
white or pink noise at 15 to 40 dB SNR; about half of each held-out split uses an accent or variant that
train never uses. Everything follows from --seed.

Writes, under --out (default data/synth_speech):
    train.jsonl, valid.jsonl, test.jsonl, test_other.jsonl
                        {"id": "train_00000", "audio": "wav/train_00000.wav", "text": "...", "duration": 1.83}
    wav/<id>.wav        16 kHz mono 16-bit PCM; paths in the manifests are relative to --out
    text.txt            the train sentences, one a line (the training text, for OOV rates)
    lm.jsonl            {"text": ...}: every WordNet sentence not in valid or test, then GCIDE's (about 4 million words)
    settings.json       the settings that made them; a rerun with the same settings does nothing

No sentence is in two splits, and no valid, test or Devil's Dictionary sentence is in lm.jsonl.

    python recipes/synth_speech/prepare.py --out data/synth_speech --jobs 2
    python recipes/synth_speech/prepare.py --say "hello there" --wav hello.wav --voice en-us+f3
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional
from tqdm import tqdm

SAMPLE_RATE = 16000
# Bump when the grammar, the voices or the audio processing change, so old corpora are rebuilt.
CORPUS_VERSION = 2

# ---------------------------------------------------------------------------------------------------------
# Text. Three Debian packages of real English, fetched with `apt-get download` and unpacked (not installed:
# dict-gcide and dict-devil would pull in a dictionary server):
#   wordnet-base  WordNet 3.0 glosses and usage examples, modern English (Princeton): train, valid, test
#   dict-devil    Ambrose Bierce's The Devil's Dictionary (1906): the other-source test, never trained on
#   dict-gcide    GNU Collaborative International Dictionary of English, definitions: language model only
# Debian's fortune databases are used by nothing here.

TEXT_PACKAGES = ("wordnet-base", "dict-devil", "dict-gcide")
MIN_WORDS, MAX_WORDS = 4, 16           # spoken sentences: about 1.5 to 7 seconds
LM_MIN_WORDS, LM_MAX_WORDS = 3, 40

# Spoken letter by letter, or as a word the transcript would not hold ("mr." is read "mister"): such
# sentences are dropped rather than guessed at, as ASR corpora drop what they cannot normalise.
ABBREVIATION = re.compile(r"\b(?:[a-z]\.){2,}|\b(?:mr|mrs|dr|st|jr|sr|etc|vs|viz|cf|ca|no|esp|pp|vol)\.", re.IGNORECASE)
ACRONYM = re.compile(r"\b[A-Z]{2,}\b")
SYMBOL = re.compile(r"[0-9$%+=/@#*<>|~^\\{}]")
PUNCTUATION = re.compile(r"[^a-z' ]+")
EDGE_APOSTROPHE = re.compile(r"(?:(?<=\s)|^)'+|'+(?=\s|$)")
WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


def normalise(text: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> str | None:
    """One ASR-style transcript of ``text``, or None when it cannot be spoken as written.

    Lowercase letters, apostrophes inside words ("don't", "o'clock"), single spaces. Hyphens and dashes
    become spaces and other punctuation goes; sentences with digits, symbols, abbreviations or acronyms
    are dropped whole (numbers are never spelled out, so the rule is the same in every split), and so
    are those with letters outside English or a word count outside [min_words, max_words].

    >>> normalise("Don't leave the well-known 'dog' outside!")
    "don't leave the well known dog outside"
    >>> normalise("He paid $5 for it.") is None
    True
    """
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'").replace("&", " and ")
    text = "".join(char for char in unicodedata.normalize("NFKD", text) if not unicodedata.combining(char))
    if not text.isascii() or SYMBOL.search(text) or ABBREVIATION.search(text) or ACRONYM.search(text):
        return None
    text = PUNCTUATION.sub(" ", text.lower().replace("_", " "))
    words = EDGE_APOSTROPHE.sub(" ", text).split()
    if not min_words <= len(words) <= max_words or not all(WORD.fullmatch(word) for word in words):
        return None
    return " ".join(words)


def fetch_package(name: str, cache: Path) -> Path:
    """Unpack Debian package ``name`` under ``cache/name`` (once) and return that folder."""
    folder = cache / name
    if (folder / ".done").exists():
        return folder
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        sys.exit(f"error: cannot fetch Debian package {name}: this needs apt-get and dpkg-deb (Debian or Ubuntu)")
    cache.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        result = subprocess.run(["apt-get", "download", name], cwd=cache, capture_output=True, text=True)
        if result.returncode == 0:
            break
        # A fresh machine has no package lists yet; as root, fetch them once and try again.
        if attempt == 0 and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    else:
        message = (result.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"error: could not download Debian package {name} ({message}); run `apt-get update` and retry")
    deb = sorted(cache.glob(f"{name}_*.deb"))[-1]
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(folder)], check=True)
    deb.unlink()
    (folder / ".done").write_text("")
    return folder


def wordnet_texts(folder: Path):
    """WordNet glosses: each definition (split at ";") and each quoted usage example, in file order."""
    for part in ("noun", "verb", "adj", "adv"):
        with open(folder / "usr/share/wordnet" / f"data.{part}", encoding="latin-1") as handle:
            for line in handle:
                if line.startswith("  ") or "|" not in line:
                    continue  # the licence header
                gloss = line.split("|", 1)[1]
                yield from re.findall(r'"([^"]+)"', gloss)
                yield from gloss.split('"', 1)[0].split(";")


def dictd_text(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
        return handle.read()


def devil_texts(folder: Path):
    """The Devil's Dictionary's prose, one sentence at a time; verse (indented lines) and headwords left out."""
    text = dictd_text(folder / "usr/share/dictd/devil.dict.dz")
    text = text[text.find("\nA, n."):] if "\nA, n." in text else text  # skip the database header
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line for line in paragraph.splitlines() if not line.startswith("  ")]
        prose = re.sub(r"^[A-Z][A-Z' -]*,\s*(?:[a-z]+\.\s*)+", "", " ".join(lines).strip())  # "HEART, n."
        yield from SENTENCE_END.split(re.sub(r"\s+", " ", prose))


def gcide_texts(folder: Path):
    """GCIDE definitions and notes without pronunciations, etymologies, sources or attributions."""
    text = dictd_text(folder / "usr/share/dictd/gcide.dict.dz")
    for paragraph in re.split(r"\n\s*\n", text):
        prose = " ".join(line.strip() for line in paragraph.splitlines())
        prose = re.sub(r"\\[^\\]*\\|\[[^\]]*\]|--\s?[A-Z][\w. ]*\.|\([^)]*\)|^\S+\s*,?\s*(?:[a-z]+\.\s*)*", " ", prose)
        yield from SENTENCE_END.split(re.sub(r"\s+", " ", prose.replace("{", "").replace("}", "")))


def unique_normalised(texts, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """The normalised sentences of ``texts``, each once, in first-seen order."""
    return list(dict.fromkeys(s for s in (normalise(t, min_words, max_words) for t in texts) if s))


def make_splits(sources: dict[str, list[str]], num_train: int, num_valid: int, num_test: int, num_test_other: int,
                seed: int) -> dict[str, list[str]]:
    """Sentences of each split, no sentence in two splits (nor in the LM text but its train part).

    ``sources`` holds the normalised sentences of "wordnet" (train, valid, test are drawn from its
    shuffled sentences), "devil" (test_other, and the demo's new sentence after it) and "gcide" (LM
    text only). Returns the splits and "lm": every WordNet sentence not held out, then GCIDE's.
    """
    rng = random.Random(seed)
    wordnet = sorted(sources["wordnet"])
    rng.shuffle(wordnet)
    devil = sorted(sources["devil"])
    rng.shuffle(devil)
    held = num_valid + num_test
    if len(wordnet) < held + num_train or len(devil) < num_test_other + 1:
        raise RuntimeError(f"the sources hold only {len(wordnet)} WordNet and {len(devil)} Devil's Dictionary "
                           "sentences, fewer than asked for")
    splits = {"train": wordnet[held:held + num_train], "valid": wordnet[:num_valid],
              "test": wordnet[num_valid:held], "test_other": devil[:num_test_other]}
    held_out = set(wordnet[:held]) | set(devil)
    splits["lm"] = wordnet[held:] + [s for s in sources["gcide"] if s not in held_out]
    return splits


def read_sources(cache: Path) -> dict[str, list[str]]:
    """Fetch the three packages into ``cache`` and return each source's normalised, unique sentences."""
    folders = {name: fetch_package(name, cache) for name in TEXT_PACKAGES}
    return {"wordnet": unique_normalised(wordnet_texts(folders["wordnet-base"])),
            "devil": unique_normalised(devil_texts(folders["dict-devil"])),
            "gcide": unique_normalised(gcide_texts(folders["dict-gcide"]), LM_MIN_WORDS, LM_MAX_WORDS)}


# ---------------------------------------------------------------------------------------------------------
# Voices and audio.

BASE_VOICES = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
# The variants that still sound like a person; robots, whispers and croaks are left out. "" is the bare voice.
VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "adam", "Alex", "Andy", "Annie", "aunty", "belinda", "benjamin", "boris", "caleb", "david",
            "ed", "edward", "grandma", "grandpa", "iven", "john", "linda", "max", "Michael", "michel", "norbert",
            "paul", "quincy", "rob", "robert", "steph", "travis", "victor", "zac"]


def require_espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        sys.exit("error: espeak-ng not found; install it with `apt-get install espeak-ng`")
    return path


def synthesize(text: str, voice: str = "en-us", speed: int = 175, pitch: int = 50,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speak ``text`` with espeak-ng and return mono float32 samples, shape ``(samples,)``, at ``sample_rate``.

    ``voice`` is an espeak-ng voice with an optional variant ("en-gb-x-rp+f3"); ``speed`` is in words a
    minute (espeak's -s), ``pitch`` 0 to 99 (espeak's -p). Raises RuntimeError when espeak-ng fails.

    >>> audio = synthesize("hello world", voice="en-us+m3")
    >>> audio.dtype, audio.ndim
    (dtype('float32'), 1)
    """
    # The text goes through stdin so a sentence that starts with "-" is never read as an option.
    result = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", "--stdin"],
                            input=text.encode(), capture_output=True)
    if result.returncode != 0 or len(result.stdout) <= 44:
        raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {result.stderr.decode().strip() or 'no audio'}")
    # espeak streams its WAV with a placeholder length; libsndfile reads up to the real end of the data.
    samples, native_rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32")
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if native_rate != sample_rate:
        samples = torchaudio.functional.resample(torch.from_numpy(samples), native_rate, sample_rate).numpy()
    return np.ascontiguousarray(samples, dtype=np.float32)


def pink_noise(length: int, generator: np.random.Generator) -> np.ndarray:
    """Noise whose power falls as 1/f, shape ``(length,)``: white noise shaped in the frequency domain."""
    spectrum = np.fft.rfft(generator.standard_normal(length))
    frequencies = np.arange(len(spectrum), dtype=np.float64)
    frequencies[0] = 1.0  # keep the DC bin finite; it is tiny after the shaping anyway
    noise = np.fft.irfft(spectrum / np.sqrt(frequencies), n=length)
    return noise / (noise.std() + 1e-12)


def add_noise(samples: np.ndarray, snr_db: float, color: str, generator: np.random.Generator) -> np.ndarray:
    """Add white or pink noise at ``snr_db`` dB below the mean power of ``samples`` (shape ``(samples,)``)."""
    noise = generator.standard_normal(len(samples)) if color == "white" else pink_noise(len(samples), generator)
    signal_power = float(np.mean(samples.astype(np.float64) ** 2))
    noise_power = float(np.mean(noise ** 2)) + 1e-12
    scale = np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
    return (samples + scale * noise).astype(np.float32)


def apply_gain(samples: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale so the peak sits ``gain_db`` dB (at most 0) below 0.95 of full scale: random loudness, no clipping."""
    peak = float(np.abs(samples).max()) + 1e-12
    return (samples * (0.95 * 10 ** (gain_db / 20) / peak)).astype(np.float32)


# Never used in train, so that held-out splits have voices training never heard: one accent and five
# variants. About half of each held-out split uses one of them (an unheard accent, variant or both).
UNHEARD_VOICES = ["en-us-nyc"]
UNHEARD_VARIANTS = ["m5", "f4", "klatt3", "grandma", "travis"]


def pick_voice(rng: random.Random, unheard: bool) -> str:
    """A voice[+variant]: from the train set, or (``unheard``) with an unheard accent, variant or both."""
    heard_voices = [voice for voice in BASE_VOICES if voice not in UNHEARD_VOICES]
    heard_variants = [variant for variant in VARIANTS if variant not in UNHEARD_VARIANTS]
    if not unheard:
        voice, variant = rng.choice(heard_voices), rng.choice(heard_variants)
    else:
        kind = rng.randrange(3)  # 0: unheard accent, 1: unheard variant, 2: both
        voice = rng.choice(UNHEARD_VOICES if kind != 1 else heard_voices)
        variant = rng.choice(UNHEARD_VARIANTS if kind != 0 else heard_variants)
    return voice + (f"+{variant}" if variant else "")


def utterance_plans(splits: dict[str, list[str]], seed: int, noise_fraction: float) -> list[dict]:
    """How each utterance is spoken: voice, speed, pitch, noise and gain, drawn once from ``seed``."""
    rng = random.Random(seed + 1)
    plans = []
    for split, sentences in splits.items():
        for index, text in enumerate(sentences):
            voice = pick_voice(rng, unheard=split != "train" and rng.random() < 0.5)
            noisy = rng.random() < noise_fraction
            plans.append({
                "id": f"{split}_{index:05d}", "split": split, "text": text, "voice": voice,
                "speed": rng.randint(130, 210), "pitch": rng.randint(25, 75),
                "noise": rng.choice(["white", "pink"]) if noisy else None,
                "snr_db": round(rng.uniform(15, 40), 1), "gain_db": round(rng.uniform(-12, 0), 1),
                "noise_seed": rng.randrange(2**32),
            })
    return plans


def render(plan: dict, out: Path) -> tuple[str, float]:
    """Synthesize one planned utterance into ``out/wav/<id>.wav``; returns ``(id, duration in seconds)``."""
    samples = synthesize(plan["text"], plan["voice"], plan["speed"], plan["pitch"])
    if plan["noise"]:
        samples = add_noise(samples, plan["snr_db"], plan["noise"], np.random.default_rng(plan["noise_seed"]))
    samples = apply_gain(samples, plan["gain_db"])
    soundfile.write(out / "wav" / f"{plan['id']}.wav", samples, SAMPLE_RATE, subtype="PCM_16")
    return plan["id"], round(len(samples) / SAMPLE_RATE, 3)


def _render_star(arguments):
    return render(*arguments)


def _worker_start():
    torch.set_num_threads(1)  # the parallelism is across processes; threads inside each would fight for cores


# ---------------------------------------------------------------------------------------------------------
# Command line.

SPLITS = ("train", "valid", "test", "test_other")


def corpus_splits(out: Path, settings: dict) -> dict[str, list[str]]:
    """The sentences of every split and of the LM text, from the sources fetched under ``out/sources``."""
    return make_splits(read_sources(out / "sources"), settings["num_train"], settings["num_valid"],
                       settings["num_test"], settings["num_test_other"], settings["seed"])


def build_corpus(out: Path, settings: dict, jobs: int) -> dict[str, list[dict]]:
    """Write the wavs, manifests, text.txt, lm.jsonl and settings.json; returns the manifest rows of each split."""
    splits = corpus_splits(out, settings)
    lm_text = splits.pop("lm")
    plans = utterance_plans(splits, settings["seed"], settings["noise_fraction"])
    (out / "settings.json").unlink(missing_ok=True)  # an interrupted rebuild must not look finished
    wav_folder = out / "wav"
    if wav_folder.exists():
        shutil.rmtree(wav_folder)  # drop utterances of an earlier, different corpus
    wav_folder.mkdir(parents=True)
    durations = {}
    work = [(plan, out) for plan in plans]
    progress = tqdm(total=len(plans), desc="synthesizing", unit="utt")
    if jobs <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # resampling one short clip on several threads is slower, not faster
        try:
            for item in work:
                utterance_id, duration = _render_star(item)
                durations[utterance_id] = duration
                progress.update()
        finally:
            torch.set_num_threads(threads)  # the caller's setting, when main() runs inside another program
    else:
        with multiprocessing.Pool(jobs, initializer=_worker_start) as pool:
            for utterance_id, duration in pool.imap_unordered(_render_star, work, chunksize=8):
                durations[utterance_id] = duration
                progress.update()
    progress.close()
    rows = {split: [] for split in splits}
    for plan in plans:
        rows[plan["split"]].append({"id": plan["id"], "audio": f"wav/{plan['id']}.wav",
                                    "text": plan["text"], "duration": durations[plan["id"]]})
    for split, split_rows in rows.items():
        with open(out / f"{split}.jsonl", "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in split_rows)
    (out / "text.txt").write_text("".join(sentence + "\n" for sentence in splits["train"]))
    with open(out / "lm.jsonl", "w") as handle:  # the language model's text: a manifest without audio
        handle.writelines(json.dumps({"text": sentence}) + "\n" for sentence in lm_text)
    (out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return rows


def is_done(out: Path, settings: dict) -> bool:
    try:
        saved = json.loads((out / "settings.json").read_text())
    except (OSError, ValueError):
        return False
    manifests = [out / f"{split}.jsonl" for split in SPLITS + ("lm",)]
    return saved == settings and all(path.exists() for path in manifests)


def summarize(rows: dict[str, list[dict]], seconds: float) -> None:
    """Print sizes, audio hours, the duration spread and how many test words train has seen."""
    all_durations = np.array([row["duration"] for split_rows in rows.values() for row in split_rows])
    train_words = Counter(word for row in rows["train"] for word in row["text"].split())
    print(f"done in {seconds:.1f} s: " + ", ".join(f"{split} {len(split_rows)}" for split, split_rows in rows.items())
          + f"; {all_durations.sum() / 3600:.2f} h of audio")
    low, median, high = np.percentile(all_durations, [5, 50, 95])
    print(f"durations: min {all_durations.min():.2f} s, 5% {low:.2f}, median {median:.2f}, "
          f"95% {high:.2f}, max {all_durations.max():.2f}")
    for split in ("test", "test_other"):
        test_words = [word for row in rows.get(split, []) for word in row["text"].split()]
        if test_words:
            seen = sum(word in train_words for word in test_words) / len(test_words)
            print(f"vocabulary: {len(train_words)} train words; {100 * seen:.1f}% of {split} words occur in train")


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="A rerun with the same settings finds the corpus done and exits at once.")
    parser.add_argument("--out", type=Path, default=Path("data/synth_speech"), help="output folder (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=8000, help="train utterances (default: %(default)s)")
    parser.add_argument("--num-valid", type=int, default=200, help="valid utterances (default: %(default)s)")
    parser.add_argument("--num-test", type=int, default=300, help="WordNet test utterances (default: %(default)s)")
    parser.add_argument("--num-test-other", type=int, default=300,
                        help="Devil's Dictionary test utterances, the other-source test (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sentences, voices and noise (default: %(default)s)")
    parser.add_argument("--noise-fraction", type=float, default=0.5,
                        help="share of utterances given white or pink noise at 15-40 dB SNR (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel synthesis processes (default: %(default)s)")
    parser.add_argument("--say", metavar="TEXT", help="instead of a corpus, speak TEXT into --wav and exit")
    parser.add_argument("--wav", type=Path, help="with --say: the 16 kHz mono WAV to write")
    parser.add_argument("--voice", default="en-us", help="with --say: espeak-ng voice[+variant] (default: %(default)s)")
    parser.add_argument("--speed", type=int, default=175, help="with --say: words a minute (default: %(default)s)")
    parser.add_argument("--pitch", type=int, default=50, help="with --say: pitch 0-99 (default: %(default)s)")
    parser.add_argument("--new-sentence", action="store_true",
                        help="print a Devil's Dictionary sentence in no split of the corpus under --out, and exit")
    arguments = parser.parse_args(argv)
    if arguments.say is not None and arguments.wav is None:
        parser.error("--say needs --wav FILE")
    for name in ("num_train", "num_valid", "num_test", "num_test_other"):
        if getattr(arguments, name) < (1 if name == "num_train" else 0):
            parser.error(f"--{name.replace('_', '-')} must be at least {1 if name == 'num_train' else 0}")
    if not 0 <= arguments.noise_fraction <= 1:
        parser.error("--noise-fraction must be between 0 and 1")
    return arguments


def new_sentence(arguments: argparse.Namespace) -> str:
    """A sentence from outside the corpus: the first other-source sentence that no split holds."""
    settings = corpus_settings(arguments)
    sources = read_sources(arguments.out / "sources")
    splits = make_splits(sources, settings["num_train"], settings["num_valid"], settings["num_test"],
                         settings["num_test_other"], settings["seed"])
    taken = {sentence for split in SPLITS for sentence in splits[split]}
    rng = random.Random(f"new-{settings['seed']}")
    candidates = [s for s in sources["devil"] if s not in taken and 6 <= len(s.split()) <= 12]
    return rng.choice(candidates)


def corpus_settings(arguments: argparse.Namespace) -> dict:
    return {"version": CORPUS_VERSION, "num_train": arguments.num_train, "num_valid": arguments.num_valid,
            "num_test": arguments.num_test, "num_test_other": arguments.num_test_other, "seed": arguments.seed,
            "noise_fraction": arguments.noise_fraction, "packages": list(TEXT_PACKAGES)}


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    if arguments.new_sentence:
        print(new_sentence(arguments))
        return
    require_espeak()
    if arguments.say is not None:
        try:
            samples = synthesize(arguments.say, arguments.voice, arguments.speed, arguments.pitch)
        except RuntimeError as error:
            sys.exit(f"error: {error}")
        arguments.wav.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(arguments.wav, samples, SAMPLE_RATE, subtype="PCM_16")
        print(f"wrote {arguments.wav} ({len(samples) / SAMPLE_RATE:.2f} s)")
        return
    settings = corpus_settings(arguments)
    out = arguments.out
    if is_done(out, settings):
        print(f"{out} already holds this corpus (settings.json matches); nothing to do")
        return
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        rows = build_corpus(out, settings, arguments.jobs)
    except RuntimeError as error:
        sys.exit(f"error: {error}")
    summarize(rows, time.perf_counter() - start)


if __name__ == "__main__":
    main()
