#!/usr/bin/env bash
# The GPU suite, in at most 8 minutes on one GPU: the CUDA tests (bf16 autocast and the fp16 scaler
# against fp32, torch.compile, CUDA decoding = CPU decoding, exact resume), bench_decode.py on the
# GPU against transformers' generate(), bench_train.py's MFU for the LibriSpeech Conformer in bf16,
# and bench_rtf.py; then one summary table.
#
#   bash tools/gpu_check.sh            # on a machine with a CUDA GPU
#   bash tools/gpu_check.sh --dry-run  # anywhere: the same steps, small and on CPU (CUDA tests skip)
#
# What the GPU machine lacks (it has torch, torchaudio, torchvision, timm) is installed from wheels
# in .whl/ (gitignored) when that folder holds any: see tools/gpu_wheels.txt for the list and the
# pip download command. Logs go to $GPU_CHECK_OUT (default $OUT or /tmp/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PYTHON=${PYTHON:-python3}
LOGS=${GPU_CHECK_OUT:-${OUT:-/tmp/gpu_check}}
mkdir -p "$LOGS"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check: installing .whl/ failed"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if [[ $DRY == 0 ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: no CUDA GPU here (use --dry-run to check the script on CPU)"; exit 1
fi
DEVICE=cuda; [[ $DRY == 1 ]] && DEVICE=cpu
ROWS=()
FAILED=0

step() {  # step NAME SECONDS FIGURE-PATTERN COMMAND...: run with a time limit, keep the log, note a figure
    local name=$1 limit=$2 pattern=$3; shift 3
    local start=$SECONDS status figure
    echo "== $name"
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    status=$?
    figure=$(grep -E -o "$pattern" "$LOGS/$name.log" | tail -n 3 | tr '\n' ' ')
    if [[ $status == 0 ]]; then state=ok; elif [[ $status == 124 ]]; then state="TIMEOUT"; FAILED=1; else state="FAIL($status)"; FAILED=1; fi
    [[ $state != ok ]] && tail -n 15 "$LOGS/$name.log"
    ROWS+=("| $name | $state | $((SECONDS - start)) s | ${figure:-} |")
}

# A small checkpoint and manifest for the decoding benchmarks: the tiny test model trained briefly
# on synthetic tones (fast anywhere; its WER means nothing, its speed is real).
FIXTURE="$LOGS/fixture"
step fixture 120 "best checkpoint: .*" "$PYTHON" - "$FIXTURE" "$DEVICE" <<'PY'
import sys
sys.path.insert(0, "tests")
from pathlib import Path
from conftest import write_speech_corpus, write_train_config
from mmseq.config import load_config
from mmseq.training.trainer import train
root, device = Path(sys.argv[1]), sys.argv[2]
manifest = write_speech_corpus(root / "corpus", count=64)
print("best checkpoint:", train(load_config(write_train_config(root / "run", manifest, device=device, max_epochs=2))))
PY

if [[ $DRY == 1 ]]; then
    step cuda_tests 120 "[0-9]+ (passed|skipped|failed)" "$PYTHON" -m pytest -q -m cuda tests/test_cuda.py -rs
    step bench_decode 240 "\| 1 \| transformers generate\(\) \| [^|]+\| [^|]+\| [^|]+\| [0-9.]+" \
        "$PYTHON" tools/bench_decode.py --beams 1 4 --batch 4 --length 8 --layers 2 --repeats 1 --no-single
    step bench_train 300 "audio_seconds_per_second +[0-9.e+-]+" "$PYTHON" tools/bench_train.py --preset librispeech --utterances 4 \
        --steps 1 --warmup 0 --no-flops
    step bench_rtf 120 "rtfx=[0-9.]+" "$PYTHON" tools/bench_rtf.py "$FIXTURE/run/out/best" "$FIXTURE/corpus/train.jsonl" \
        --limit 16 --device cpu
else
    step cuda_tests 240 "[0-9]+ (passed|skipped|failed)|largest weight difference [0-9.e+-]+" \
        "$PYTHON" -m pytest -q -m cuda tests/test_cuda.py -rs -s
    step bench_decode 120 "\| (1|4|10) \| transformers generate\(\) \| [^|]+\| [^|]+\| [^|]+\| [0-9.]+" \
        "$PYTHON" tools/bench_decode.py --device cuda --beams 1 4 10 --no-single --repeats 3
    step bench_train 150 "mfu +[0-9.e+-]+|audio_seconds_per_second +[0-9.e+-]+" "$PYTHON" tools/bench_train.py --preset librispeech --utterances 96
    step bench_rtf 60 "rtfx=[0-9.]+" "$PYTHON" tools/bench_rtf.py "$FIXTURE/run/out/best" "$FIXTURE/corpus/train.jsonl" \
        --batch-size 64
fi

echo
echo "gpu_check $( [[ $DRY == 1 ]] && echo '--dry-run (CPU; CUDA parts skipped)' || nvidia-smi --query-gpu=name --format=csv,noheader | head -1 ), logs in $LOGS"
echo "| step | result | time | figures |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
exit $FAILED
