#!/usr/bin/env bash
# benchmarks/gpu_check.py on a lent GPU machine (Python 3.12, torch, lightning, timm… but no package index):
# installs the wheels carried in .whl/ (docs/gpu.md says how to fetch them), makes finetune importable from this
# checkout as an install would (conf/ and recipes/ as finetune.conf / finetune.recipes, linked for the run and
# removed again), then runs the check. Figures: $OUT/gpu_check.json and $OUT/gpu_check.md (OUT defaults to
# gpu_check_out). Extra arguments go to the script (e.g. --sections=throughput,fsdp).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
for folder in conf recipes; do
    [ -e "finetune/$folder" ] || { ln -s "../$folder" "finetune/$folder"; trap 'rm -f finetune/conf finetune/recipes' EXIT; }
done
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -m benchmarks.gpu_check --out "$OUT" "$@"
