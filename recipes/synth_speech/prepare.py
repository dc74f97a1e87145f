"""Make a synthetic English speech corpus with espeak-ng, for training and testing speech recognition offline.

Sentences come from a small grammar (about 450 common words, 3 to 10 words a sentence); each one is spoken
by a random espeak-ng voice and variant at a random speed and pitch, resampled to 16 kHz mono, given a
random gain and, on some of them, white or pink noise at 15 to 40 dB SNR. Everything follows from --seed.

Writes, under --out (default data/synth_speech):
    train.jsonl, valid.jsonl, test.jsonl   {"id": "train_00000", "audio": "wav/train_00000.wav", "text": "...", "duration": 1.83}
    wav/<id>.wav                           16 kHz mono 16-bit PCM; paths in the manifests are relative to --out
    text.txt                               the train sentences, one a line (for tokenizer or language model training)
    settings.json                          the settings that made them; a rerun with the same settings does nothing

The three splits share no sentence, and the valid and test sentences use words seen in train wherever the
grammar allows, so a test measures new sentences rather than new words.

    python recipes/synth_speech/prepare.py --out data/synth_speech --jobs 2
    python recipes/synth_speech/prepare.py --say "hello there" --wav hello.wav --voice en-us+f3
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional
from tqdm import tqdm

SAMPLE_RATE = 16000
# Bump when the grammar, the voices or the audio processing change, so old corpora are rebuilt.
CORPUS_VERSION = 1

# ---------------------------------------------------------------------------------------------------------
# Grammar. Verbs are (base, third person singular, past, present participle).

NAMES = ["anna", "ben", "emma", "jack", "kate", "leo", "maria", "nick", "peter", "rose", "sam", "tom"]
PEOPLE = ["man", "woman", "boy", "girl", "child", "teacher", "doctor", "farmer", "mother", "father",
          "sister", "brother", "friend"]
ANIMALS = ["dog", "cat", "bird", "horse", "cow", "fish", "rabbit", "duck", "sheep"]
THINGS = ["ball", "book", "box", "cup", "bag", "hat", "key", "phone", "letter", "bottle", "pen", "map",
          "picture", "gift", "shoe", "ticket", "flower", "chair", "table", "toy", "umbrella"]
FOODS = ["apple", "cake", "egg", "orange", "banana", "sandwich", "pie", "cookie", "potato", "carrot"]
DRINKS = ["milk", "tea", "coffee", "water", "juice"]
READABLES = ["book", "letter", "story", "map", "note"]
OPENABLES = ["door", "window", "box", "bag", "book", "bottle", "gate"]
IRREGULAR_PLURALS = {"man": "men", "woman": "women", "child": "children", "mouse": "mice", "sheep": "sheep",
                     "fish": "fish", "fox": "foxes", "potato": "potatoes", "box": "boxes",
                     "sandwich": "sandwiches", "story": "stories", "glass": "glasses"}

THING_ADJECTIVES = ["big", "small", "red", "blue", "green", "yellow", "black", "white", "old", "new",
                    "clean", "dirty", "heavy", "empty", "broken", "pretty"]
FOOD_ADJECTIVES = ["sweet", "fresh", "warm", "cold", "hot", "big", "small"]
LIVING_ADJECTIVES = ["happy", "sad", "tired", "hungry", "busy", "kind", "clever", "funny", "tall", "young",
                     "old", "little", "quiet", "lazy"]
STATE_ADJECTIVES = ["happy", "sad", "tired", "hungry", "busy", "late", "early", "ready", "sick", "cold",
                    "hot", "sorry", "lost", "home"]
WEATHER = ["cold", "hot", "warm", "sunny", "rainy", "windy", "dark", "late", "early", "quiet"]
ADVERBS = ["quickly", "slowly", "quietly", "loudly", "carefully", "again", "together", "alone", "outside",
           "all day"]
FREQUENCIES = ["often", "never", "always", "sometimes", "usually"]

PLACES = ["in the kitchen", "at the park", "near the river", "on the hill", "in the garden", "at school",
          "at home", "in the city", "by the sea", "under the bridge", "behind the house", "in the forest",
          "at the station", "in the shop", "on the beach", "at the market", "in the library", "at work",
          "on the farm", "in the car", "on the train", "at the zoo", "near the lake", "on the road",
          "in the street", "on the bus"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
TIMES = ["today", "yesterday", "tomorrow", "this morning", "last night", "every day", "in the evening",
         "after lunch", "before dinner", "next week", "last year", "at night", "right now", "soon", "later"]
TIMES += [f"on {day}" for day in DAYS]

TAKES_THING = [("take", "takes", "took", "taking"), ("find", "finds", "found", "finding"),
               ("buy", "buys", "bought", "buying"), ("carry", "carries", "carried", "carrying"),
               ("bring", "brings", "brought", "bringing"), ("fix", "fixes", "fixed", "fixing"),
               ("clean", "cleans", "cleaned", "cleaning"),
               ("hold", "holds", "held", "holding"), ("keep", "keeps", "kept", "keeping"),
               ("lose", "loses", "lost", "losing"), ("make", "makes", "made", "making"),
               ("throw", "throws", "threw", "throwing"), ("want", "wants", "wanted", "wanting"),
               ("need", "needs", "needed", "needing")]
TAKES_FOOD = [("eat", "eats", "ate", "eating"), ("cook", "cooks", "cooked", "cooking"),
              ("cut", "cuts", "cut", "cutting"), ("buy", "buys", "bought", "buying"),
              ("want", "wants", "wanted", "wanting")]
TAKES_DRINK = [("drink", "drinks", "drank", "drinking"), ("want", "wants", "wanted", "wanting")]
TAKES_READABLE = [("read", "reads", "read", "reading"), ("write", "writes", "wrote", "writing"),
                  ("find", "finds", "found", "finding")]
TAKES_OPENABLE = [("open", "opens", "opened", "opening"), ("close", "closes", "closed", "closing")]
TAKES_LIVING = [("see", "sees", "saw", "seeing"), ("watch", "watches", "watched", "watching"),
                ("help", "helps", "helped", "helping"), ("call", "calls", "called", "calling"),
                ("meet", "meets", "met", "meeting"), ("follow", "follows", "followed", "following"),
                ("visit", "visits", "visited", "visiting"), ("like", "likes", "liked", "liking")]
INTRANSITIVE = [("run", "runs", "ran", "running"), ("walk", "walks", "walked", "walking"),
                ("sleep", "sleeps", "slept", "sleeping"), ("sing", "sings", "sang", "singing"),
                ("dance", "dances", "danced", "dancing"), ("swim", "swims", "swam", "swimming"),
                ("jump", "jumps", "jumped", "jumping"), ("laugh", "laughs", "laughed", "laughing"),
                ("cry", "cries", "cried", "crying"), ("wait", "waits", "waited", "waiting"),
                ("sit", "sits", "sat", "sitting"), ("play", "plays", "played", "playing"),
                ("work", "works", "worked", "working"), ("talk", "talks", "talked", "talking")]
GIVING = [("give", "gives", "gave", "giving"), ("show", "shows", "showed", "showing"),
          ("bring", "brings", "brought", "bringing"), ("buy", "buys", "bought", "buying")]
MODALS = ["will", "can", "can't", "won't", "should", "must", "could", "didn't"]

ONES = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(number: int) -> str:
    """Spell 1..999 as words without hyphens or "and": 342 -> "three hundred forty two"."""
    if number >= 100:
        rest = number % 100
        head = f"{ONES[number // 100 - 1]} hundred"
        return f"{head} {number_words(rest)}" if rest else head
    if number < 20:
        return ONES[number - 1]
    tens, ones = divmod(number, 10)
    return TENS[tens - 2] + (f" {ONES[ones - 1]}" if ones else "")


def plural(noun: str) -> str:
    return IRREGULAR_PLURALS.get(noun, noun + "s")


def pick_number(rng: random.Random) -> int:
    """Mostly small numbers, as people say them, with some up to 999."""
    roll = rng.random()
    if roll < 0.6:
        return rng.randint(2, 20)
    if roll < 0.9:
        return rng.randint(21, 99)
    return rng.randint(100, 999)


def pick_subject(rng: random.Random) -> tuple[str, bool]:
    """A subject and whether it takes the third person singular ("she runs", not "they runs")."""
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(NAMES), True
    if roll < 0.55:
        determiner = rng.choice(["the", "my", "your", "our", "their", "a", "this", "that"])
        return f"{determiner} {rng.choice(PEOPLE + ANIMALS)}", True
    if roll < 0.65:
        return "the " + plural(rng.choice(PEOPLE + ANIMALS)), False
    if roll < 0.75:
        return f"{rng.choice(NAMES)} and {rng.choice(NAMES)}", False
    pronoun = rng.choice(["i", "you", "he", "she", "we", "they"])
    return pronoun, pronoun in ("he", "she")


def pick_object(rng: random.Random, nouns: list[str], adjectives: list[str]) -> str:
    """A noun phrase such as "an old umbrella" or "her red hat"."""
    determiner = rng.choice(["the", "a", "my", "your", "his", "her", "our", "their", "this", "that", "the"])
    adjective = rng.choice(adjectives) + " " if rng.random() < 0.4 else ""
    noun = rng.choice(nouns)
    if determiner == "a" and (adjective or noun)[0] in "aeiou":
        determiner = "an"
    return f"{determiner} {adjective}{noun}"


def pick_transitive(rng: random.Random) -> tuple[tuple[str, str, str, str], str]:
    """A verb and a fitting object phrase: people read letters and drink tea, they do not drink letters."""
    kind = rng.choices(["thing", "food", "drink", "read", "open", "living"], weights=[8, 3, 1, 2, 1, 4])[0]
    if kind == "thing":
        return rng.choice(TAKES_THING), pick_object(rng, THINGS, THING_ADJECTIVES)
    if kind == "food":
        return rng.choice(TAKES_FOOD), pick_object(rng, FOODS, FOOD_ADJECTIVES)
    if kind == "drink":
        determiner = rng.choice(["the", "some", "my", "your", "hot", "cold"])
        return rng.choice(TAKES_DRINK), f"{determiner} {rng.choice(DRINKS)}"
    if kind == "read":
        return rng.choice(TAKES_READABLE), pick_object(rng, READABLES, THING_ADJECTIVES)
    if kind == "open":
        return rng.choice(TAKES_OPENABLE), pick_object(rng, OPENABLES, THING_ADJECTIVES)
    living = rng.choice(NAMES) if rng.random() < 0.3 else pick_object(rng, PEOPLE + ANIMALS, LIVING_ADJECTIVES)
    return rng.choice(TAKES_LIVING), living


def adjectives_for(noun: str) -> list[str]:
    return THING_ADJECTIVES if noun in THINGS else FOOD_ADJECTIVES if noun in FOODS else LIVING_ADJECTIVES


def maybe(rng: random.Random, options: list[str], probability: float) -> str:
    """With ``probability``, a space and one of ``options``; else the empty string."""
    return " " + rng.choice(options) if rng.random() < probability else ""


def be_form(subject: str, singular: bool, past: bool = False) -> str:
    if past:
        return "was" if singular or subject == "i" else "were"
    return "am" if subject == "i" else "is" if singular else "are"


def contracted_be(subject: str, singular: bool) -> str:
    """Pronouns contract ("i'm", "she's"); other subjects keep "is" and "are" ("the dog's" would read as a possessive)."""
    forms = {"i": "i'm", "you": "you're", "he": "he's", "she": "she's", "we": "we're", "they": "they're"}
    return forms.get(subject, f"{subject} {be_form(subject, singular)}")


def template_past(rng):  # the dog found a red ball in the garden yesterday
    subject, _ = pick_subject(rng)
    verb, obj = pick_transitive(rng)
    return f"{subject} {verb[2]} {obj}" + maybe(rng, PLACES, 0.5) + maybe(rng, TIMES, 0.4)


def template_present(rng):  # she often reads a letter at home
    subject, singular = pick_subject(rng)
    verb, obj = pick_transitive(rng)
    verb_form = verb[1] if singular else verb[0]
    return subject + maybe(rng, FREQUENCIES, 0.4) + f" {verb_form} {obj}" + maybe(rng, PLACES, 0.5)


def template_progressive(rng):  # we're cooking the eggs right now
    subject, singular = pick_subject(rng)
    verb, obj = pick_transitive(rng)
    return f"{contracted_be(subject, singular)} {verb[3]} {obj}" + maybe(rng, PLACES + ["right now"], 0.6)


def template_intransitive(rng):  # the old horse walked slowly near the river
    if rng.random() < 0.5:
        subject = "the " + rng.choice(LIVING_ADJECTIVES) + " " + rng.choice(PEOPLE + ANIMALS)
    else:
        subject, _ = pick_subject(rng)
    verb = rng.choice(INTRANSITIVE)
    return f"{subject} {verb[2]}" + maybe(rng, ADVERBS, 0.5) + maybe(rng, PLACES, 0.6) + maybe(rng, TIMES, 0.3)


def template_modal(rng):  # you can't take my umbrella tomorrow
    subject, _ = pick_subject(rng)
    if rng.random() < 0.7:
        verb, rest = pick_transitive(rng)
        predicate = f"{verb[0]} {rest}"
    else:
        predicate = rng.choice(INTRANSITIVE)[0] + maybe(rng, ADVERBS, 0.5)
    return f"{subject} {rng.choice(MODALS)} {predicate}" + maybe(rng, PLACES + TIMES, 0.5)


def template_negative(rng):  # ben doesn't eat the cold pie
    subject, singular = pick_subject(rng)
    verb, obj = pick_transitive(rng)
    auxiliary = rng.choice(["doesn't" if singular else "don't", "didn't"])
    return f"{subject} {auxiliary} {verb[0]} {obj}" + maybe(rng, PLACES + TIMES, 0.4)


def template_giving(rng):  # rose gave her brother a small gift
    subject, _ = pick_subject(rng)
    verb = rng.choice(GIVING)
    receiver = rng.choice(NAMES + ["me", "us", "them", "him", "her", "the teacher", "my friend", "her brother"])
    gift = pick_object(rng, THINGS + FOODS, THING_ADJECTIVES)
    return f"{subject} {verb[2]} {receiver} {gift}" + maybe(rng, TIMES, 0.3)


def template_count(rng):  # there are twenty three small ducks on the farm
    noun = rng.choice(THINGS + FOODS + ANIMALS + PEOPLE)
    adjective = maybe(rng, adjectives_for(noun), 0.3)
    amount = number_words(pick_number(rng))
    choice = rng.random()
    if choice < 0.4:
        return f"there are {amount}{adjective} {plural(noun)}" + maybe(rng, PLACES, 0.8)
    if choice < 0.7:
        subject, singular = pick_subject(rng)
        have = rng.choice(["has" if singular else "have", "had", "needs" if singular else "need", "bought", "found"])
        return f"{subject} {have} {amount}{adjective} {plural(noun)}"
    if choice < 0.85:
        return f"{rng.choice(NAMES)} is {number_words(rng.randint(2, 90))} years old"
    return f"the {rng.choice(['bus', 'train', 'class', 'party', 'game', 'shop'])} " \
           f"{rng.choice(['starts', 'leaves', 'opens', 'closes'])} at {number_words(rng.randint(1, 12))} o'clock"


def template_description(rng):  # anna's cat is very lazy / the cake was too sweet
    if rng.random() < 0.5:
        noun = rng.choice(THINGS + ANIMALS)
        owner = rng.choice(NAMES + ["the teacher", "my brother", "your friend", "the farmer"])
        subject = f"{owner}'s {noun}"
    else:
        noun = rng.choice(THINGS + FOODS + ANIMALS)
        subject = f"the {noun}"
    verb = rng.choice(["is", "was", "looks", "seems"])
    return f"{subject} {verb}" + maybe(rng, ["very", "too", "really"], 0.4) + f" {rng.choice(adjectives_for(noun))}"


def template_state(rng):  # i'm very tired today / it's windy this morning
    if rng.random() < 0.4:
        head = rng.choice(["it's", "it was", "it is", "it will be", "it isn't"])
        return f"{head} {rng.choice(WEATHER)}" + maybe(rng, TIMES + PLACES, 0.8)
    subject, singular = pick_subject(rng)
    if rng.random() < 0.5:
        head = contracted_be(subject, singular)
    else:
        head = f"{subject} {be_form(subject, singular, past=True)}"
    adjective = rng.choice(STATE_ADJECTIVES)
    return head + maybe(rng, ["very", "so", "not", "really"], 0.4) + f" {adjective}" + maybe(rng, TIMES, 0.5)


def template_question(rng):  # where did you put my keys / can you help the old farmer
    choice = rng.randrange(8)
    if choice == 0:
        return f"where is {pick_object(rng, THINGS, THING_ADJECTIVES)}"
    if choice == 1:
        who = rng.choice(["you", "we", "they", "he", "she"] + NAMES)
        thing = rng.choice(THINGS)
        owner = rng.choice(["the", "my", "your", "our"])
        return f"where did {who} put {owner} {rng.choice([thing, plural(thing)])}"
    if choice == 2:
        verb, obj = pick_transitive(rng)
        auxiliary = rng.choice(["can", "could", "will", "did", "should"])
        who = rng.choice(["you", "we", "they", "i"] + NAMES)
        return f"{auxiliary} {who} {verb[0]} {obj}" + maybe(rng, PLACES + TIMES, 0.4)
    if choice == 3:
        who = rng.choice(NAMES + ["your friend", "the teacher", "the doctor", "my sister"])
        if rng.random() < 0.5:
            return f"what is {who} {rng.choice(TAKES_THING)[3]}" + maybe(rng, PLACES, 0.5)
        return f"why is {who} {rng.choice(INTRANSITIVE)[3]}" + maybe(rng, PLACES, 0.5)
    if choice == 4:
        verb, obj = pick_transitive(rng)
        return f"who {verb[2]} {obj}" + maybe(rng, PLACES + TIMES, 0.5)
    if choice == 5:
        things = plural(rng.choice(THINGS + ANIMALS + FOODS))
        ending = rng.choice(["are there", "do you have", "did you see", "did they buy"])
        return f"how many {things} {ending}" + maybe(rng, PLACES, 0.5)
    if choice == 6:
        noun = rng.choice(FOODS + THINGS)
        return f"why is the {noun} so {rng.choice(adjectives_for(noun))}"
    verb = rng.choice(["like", "want", "see", "need", "hear"])
    things = plural(rng.choice(ANIMALS + FOODS + THINGS))
    return f"{rng.choice(['do', 'did'])} you {verb} {rng.choice(['the', 'my', 'their'])} {things}"


TEMPLATES = [(template_past, 5), (template_present, 4), (template_progressive, 3), (template_intransitive, 4),
             (template_modal, 3), (template_negative, 2), (template_giving, 2), (template_count, 3),
             (template_description, 3), (template_state, 3), (template_question, 4)]


def make_sentence(rng: random.Random) -> str:
    """One sentence of 3 to 10 lowercase words (letters, spaces and apostrophes)."""
    functions, weights = zip(*TEMPLATES)
    while True:
        words = rng.choices(functions, weights=weights)[0](rng).split()
        if 3 <= len(words) <= 10:
            return " ".join(words)


def make_splits(num_train: int, num_valid: int, num_test: int, seed: int) -> dict[str, list[str]]:
    """Unique sentences for train, valid and test, no sentence in two splits.

    The valid and test sentences are drawn again (up to 1,000 times each) until all their words occur in
    train, so held-out sentences are new arrangements of known words.
    """
    rng = random.Random(seed)
    taken: set[str] = set()
    train: list[str] = []
    for _ in range(100 * num_train + 1000):
        if len(train) == num_train:
            break
        sentence = make_sentence(rng)
        if sentence not in taken:
            taken.add(sentence)
            train.append(sentence)
    else:
        raise RuntimeError(f"the grammar gave only {len(train)} unique sentences of the {num_train} asked for")
    train_words = {word for sentence in train for word in sentence.split()}
    splits = {"train": train}
    for split, count in (("valid", num_valid), ("test", num_test)):
        sentences = []
        for _ in range(count):
            candidate = None
            for _ in range(1000):
                sentence = make_sentence(rng)
                if sentence in taken:
                    continue
                candidate = sentence
                if set(sentence.split()) <= train_words:
                    break
            if candidate is None:
                raise RuntimeError(f"the grammar ran out of unique sentences for {split}")
            taken.add(candidate)
            sentences.append(candidate)
        splits[split] = sentences
    return splits


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


def utterance_plans(splits: dict[str, list[str]], seed: int, noise_fraction: float) -> list[dict]:
    """How each utterance is spoken: voice, speed, pitch, noise and gain, drawn once from ``seed``."""
    rng = random.Random(seed + 1)
    plans = []
    for split, sentences in splits.items():
        for index, text in enumerate(sentences):
            variant = rng.choice(VARIANTS)
            voice = rng.choice(BASE_VOICES) + (f"+{variant}" if variant else "")
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

def build_corpus(out: Path, settings: dict, jobs: int) -> dict[str, list[dict]]:
    """Write the wavs, manifests, text.txt and settings.json; returns the manifest rows of each split."""
    splits = make_splits(settings["num_train"], settings["num_valid"], settings["num_test"], settings["seed"])
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
    (out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return rows


def is_done(out: Path, settings: dict) -> bool:
    try:
        saved = json.loads((out / "settings.json").read_text())
    except (OSError, ValueError):
        return False
    manifests = [out / f"{split}.jsonl" for split in ("train", "valid", "test")]
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
    test_words = [word for row in rows["test"] for word in row["text"].split()]
    if test_words:
        seen = sum(word in train_words for word in test_words) / len(test_words)
        print(f"vocabulary: {len(train_words)} train words; {100 * seen:.1f}% of test words occur in train")


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="A rerun with the same settings finds the corpus done and exits at once.")
    parser.add_argument("--out", type=Path, default=Path("data/synth_speech"), help="output folder (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=3000, help="train utterances (default: %(default)s)")
    parser.add_argument("--num-valid", type=int, default=200, help="valid utterances (default: %(default)s)")
    parser.add_argument("--num-test", type=int, default=200, help="test utterances (default: %(default)s)")
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
                        help="print a grammar sentence that is in no split of the corpus these settings make, and exit")
    arguments = parser.parse_args(argv)
    if arguments.say is not None and arguments.wav is None:
        parser.error("--say needs --wav FILE")
    for name in ("num_train", "num_valid", "num_test"):
        if getattr(arguments, name) < (1 if name == "num_train" else 0):
            parser.error(f"--{name.replace('_', '-')} must be at least {1 if name == 'num_train' else 0}")
    if not 0 <= arguments.noise_fraction <= 1:
        parser.error("--noise-fraction must be between 0 and 1")
    return arguments


def new_sentence(settings: argparse.Namespace) -> str:
    """A sentence of the corpus grammar that the corpus made with these settings does not hold."""
    splits = make_splits(settings.num_train, settings.num_valid, settings.num_test, settings.seed)
    taken = {sentence for sentences in splits.values() for sentence in sentences}
    train_words = {word for sentence in splits["train"] for word in sentence.split()}
    rng = random.Random(f"new-{settings.seed}")
    while True:
        sentence = make_sentence(rng)
        if sentence not in taken and len(sentence.split()) >= 5 and set(sentence.split()) <= train_words:
            return sentence


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
    settings = {"version": CORPUS_VERSION, "num_train": arguments.num_train, "num_valid": arguments.num_valid,
                "num_test": arguments.num_test, "seed": arguments.seed, "noise_fraction": arguments.noise_fraction}
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
