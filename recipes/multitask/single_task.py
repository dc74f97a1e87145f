"""Write the single-task config that matches one task of a multitask config: the same encoder,
decoder, tokenizer type, batch budget, CTC weight, decoding and trainer settings, trained on
that task's lines only. Same epochs over the same examples give the same steps per task.

    python recipes/multitask/single_task.py recipes/multitask/config.yaml asr exp/single_asr > single_asr.yaml
"""

from __future__ import annotations

import argparse
import copy

import yaml


def single_task_config(config: dict, task: str, output_dir: str) -> dict:
    entry = config["model"]["tasks"].get(task)
    if entry is None:
        raise SystemExit(f"task {task!r} is not in model.tasks ({', '.join(config['model']['tasks'])})")
    single = copy.deepcopy(config)
    single["task"], single["output_dir"] = task, output_dir
    single["data"]["batch_size"] = entry.get("batch_size", 1.0)
    for split in ("train", "valid"):
        # data/multitask/train.jsonl -> data/multitask/asr/train.jsonl (prepare.py writes both)
        folder, name = single["data"][split].rsplit("/", 1)
        single["data"][split] = f"{folder}/{task}/{name}"
    model = single["model"]
    model["encoder"] = entry["encoder"]
    model["ctc_weight"] = entry.get("ctc_weight", 0.0)
    del model["tasks"]
    single["decoding"] = {**single.get("decoding", {}), **entry.get("decoding", {})}
    return single


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the multitask config")
    parser.add_argument("task", help="one of its model.tasks")
    parser.add_argument("output_dir", help="output_dir of the single-task run")
    args = parser.parse_args(argv)
    with open(args.config) as file:
        config = yaml.safe_load(file)
    print(yaml.safe_dump(single_task_config(config, args.task, args.output_dir), sort_keys=False), end="")


if __name__ == "__main__":
    main()
