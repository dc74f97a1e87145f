"""Prompt tuning: a new task learned by N soft prompt vectors, every other weight of a trained
model frozen (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

A config's ``prompt_tuning`` section (:class:`mmseq.config.PromptTuningConfig`) makes ``mmseq
train`` load the ``base`` checkpoint, add a route ``task`` that shares the encoder, CTC head,
decoding settings and prompt of the base's route ``from_task``, and put ``vectors`` trainable
vectors (``TextDecoder.add_soft_prompt``) before that route's task token. Only they are trained
(``train: all`` trains every weight through the same route: the full fine-tuning baseline).
``deep: true`` gives each prompt position its own vector at every decoder layer's input too
(deep prompt tuning, as P-tuning v2, Liu et al. 2022), still a few thousand numbers. ``lora: R``
adds the second adapter form, rank-R LoRA updates of the decoder's attention projections
(:mod:`mmseq.adapters`), trained with the vectors, and ``lora_encoder: R`` the same on every linear
layer of the route's encoder. Like the vectors, they belong to the new route: the base's own tasks,
which share the decoder (and encoder), run on the base weights exactly as before.

The run's checkpoints are small folders: ``config.json`` holds only a pointer to the base,

    {"prompt_tuning": {"base": "exp/synth_text/best", "base_absolute": "/.../step-00000948",
                       "base_sha256": "...", "task": "digits", "from_task": "text", "vectors": 20,
                       "train": "prompt"}}

and ``model.safetensors`` only the soft prompt (``decoder.soft_prompt``, ``(vectors, dim)``, and
with ``deep`` ``decoder.deep_prompt``, ``(layers - 1, vectors, dim)``),
beside the trainer's state, as in any checkpoint. :func:`mmseq.load` on such a folder loads the
base and applies the prompt; :func:`apply_prompt_tuning` applies it to a base already loaded
(``--prompt-tuning FOLDER``). Both refuse a base whose ``model.safetensors`` is not the one the
prompt was tuned on (its SHA-256 differs): the vectors mean something only to those weights.
"""

from __future__ import annotations

from pathlib import Path

from ..adapters import add_adapters, add_route, freeze
from ..checkpoint import WEIGHTS_FILE, file_sha256, load
from ..errors import ConfigError, InputError
from ..tasks import TaskTable
from .stages import Stage


class PromptTuningStage(Stage):
    """The prompt-tuning stage of a run (``prompt_tuning.base``): the base with a new route whose
    soft prompt (and LoRA, ``prompt_tuning.lora``) alone is trained, on the new task alone."""

    def start_model(self):
        """The base with the new route, its pointer set."""
        settings = self.config.prompt_tuning
        base = Path(settings.base)
        model = load(base)
        if model.prompt_tuning is not None:
            raise ConfigError(f"prompt_tuning.base={settings.base}: a prompt-tuned folder; tune from a full checkpoint")
        try:
            from_task = model.route(settings.from_task).name
        except InputError as error:
            raise ConfigError(f"prompt_tuning.from_task: {error}") from None
        room = model.decoder.config.max_length - 1 - len(model.route(from_task).task.prompt())  # <s> and the prompt
        if settings.vectors >= room:
            raise ConfigError(f"prompt_tuning.vectors={settings.vectors}: the base's decoder holds "
                              f"{model.decoder.config.max_length} tokens, prompt and text together; give fewer than {room}")
        route = add_route(model, settings.task, from_task, settings.vectors, settings.deep)
        add_adapters(model, route, settings.lora, settings.lora_encoder)
        model.prompt_tuning = {"deep": bool(settings.deep), "lora": int(settings.lora),
                               "lora_encoder": int(settings.lora_encoder), "base": str(settings.base),
                               "base_absolute": str(base.resolve()), "base_sha256": file_sha256(base / WEIGHTS_FILE),
                               "task": settings.task, "from_task": from_task, "vectors": int(settings.vectors),
                               "train": settings.train}
        return model

    def check_resumed(self, model, folder: Path) -> None:
        """The resumed checkpoint was tuned as the config says (same task, vectors, way of
        training, and base weights)."""
        settings, record = self.config.prompt_tuning, model.prompt_tuning or {}
        for key in ("task", "vectors", "train", "deep", "lora", "lora_encoder"):
            if record.get(key, False) != getattr(settings, key):  # (False == 0: an older record without lora)
                raise ConfigError(f"{folder}: tuned with prompt_tuning.{key}={record.get(key)!r}, the config says "
                                  f"{getattr(settings, key)!r}; resume with the same settings or use another output_dir")
        weights = Path(settings.base) / WEIGHTS_FILE
        if weights.is_file() and file_sha256(weights) != record.get("base_sha256"):
            raise ConfigError(f"{weights}: not the base {folder / WEIGHTS_FILE} was tuned from (its SHA-256 differs); "
                              "resume with that base or use another output_dir")

    def training_table(self, model, log):
        """Freeze the model but its prompt, log the trainable share, and return the new route alone,
        so that every training and validation line is its (no ``task`` field needed)."""
        record = model.prompt_tuning
        trainable, total = freeze(model, record["train"])
        log(f"prompt tuning task {record['task']!r} (from {record['from_task']!r} of {record['base']}): "
            f"{trainable} trainable parameters of {total} ({100 * trainable / total:.3g} %)")
        route = model.routes[record["task"]]
        return TaskTable({route.name: route.task}, {route.name: route.batch_size})

    def after_save(self, folder: Path, log) -> None:
        """Log the checkpoint's weights file and whole folder in bytes."""
        total = sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
        log(f"checkpoint {Path(folder).name}: {WEIGHTS_FILE} {(Path(folder) / WEIGHTS_FILE).stat().st_size} bytes, "
            f"folder {total} bytes")
