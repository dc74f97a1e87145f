"""The Java processes of pycocoevalcap: whether Java runs here, METEOR and SPICE, each started
once per call and always stopped, run from folders of our own."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError


@functools.lru_cache(maxsize=1)
def java_problem() -> str | None:
    """Why Java cannot run here (a one-line reason), or None when ``java -version`` works."""
    java = shutil.which("java")
    if java is None:
        return "no 'java' on PATH (install a Java runtime, e.g. 'apt-get install default-jre-headless')"
    try:
        completed = subprocess.run([java, "-version"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"'{java} -version' failed: {error}"
    if completed.returncode != 0:
        message = completed.stderr.decode(errors="replace").strip().splitlines()
        return f"'{java} -version' exited with {completed.returncode}: {message[-1] if message else ''}"
    return None


def _pycocoevalcap_folder() -> Path:
    from pycocoevalcap.tokenizer import ptbtokenizer

    return Path(ptbtokenizer.__file__).resolve().parent.parent


def _run_meteor(gts: dict, res: dict) -> float:
    """pycocoevalcap's ``Meteor().compute_score`` (one JVM for the whole call, always stopped).
    Its ``_score`` is broken on Python 3; ``compute_score`` is the working path."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    process = meteor.meteor_p
    try:
        score, _ = meteor.compute_score(gts, res)
        return float(score)
    except (ValueError, OSError) as error:
        # A crashed JVM shows up as "could not convert string to float" or a broken pipe.
        process.kill()
        process.wait()
        stderr = process.stderr.read().decode(errors="replace").strip()[-500:]
        raise RuntimeError(f"METEOR's Java process failed ({error}); its stderr: {stderr}") from error
    finally:
        process.stdin.close()
        process.kill()
        process.wait()
        process.stderr.close()
        process.stdout.close()


def _spice_jars() -> list[Path]:
    """SPICE's jar and the Stanford CoreNLP 3.6.0 jars it needs in its ``lib`` (which
    pycocoevalcap downloads on first use, and we never do)."""
    spice_folder = _pycocoevalcap_folder() / "spice"
    needed = [spice_folder / "spice-1.0.jar"] + [
        spice_folder / "lib" / name for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
    ]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        raise ConfigError(
            f"SPICE was asked for but needs {', '.join(missing)}; mmseq downloads nothing at run time. "
            "Run 'python -m pycocoevalcap.spice.get_stanford_models' once (about 385 MB), or score without SPICE"
        )
    return needed


def _run_spice(gts: dict, res: dict) -> float:
    """pycocoevalcap's ``Spice().compute_score``, run from a temporary folder of our own."""
    jar = _spice_jars()[0]
    images = sorted(gts)
    with tempfile.TemporaryDirectory(prefix="mmseq-spice-") as folder:
        input_path, output_path = Path(folder) / "input.json", Path(folder) / "output.json"
        input_path.write_text(json.dumps([{"image_id": i, "test": res[i][0], "refs": gts[i]} for i in images]))
        command = ["java", "-jar", "-Xmx8G", str(jar), str(input_path), "-out", str(output_path), "-subset", "-silent"]
        completed = subprocess.run(command, cwd=folder, capture_output=True)
        if completed.returncode != 0:
            raise RuntimeError(f"SPICE exited with {completed.returncode}: {completed.stderr.decode(errors='replace')[-500:]}")
        results = json.loads(output_path.read_text())

    def as_float(value) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            return float("nan")

    return float(np.mean([as_float(item["scores"]["All"]["f"]) for item in results]))
