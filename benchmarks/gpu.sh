#!/usr/bin/env bash
# Everything that needs GPUs, in one command, from the repository root:
#
#   bash benchmarks/gpu.sh            # uses every visible GPU; results in benchmarks/results/
#
# 1. benchmarks/throughput.py on GPU (bf16, channels-last, 224 px, resnet18 student / resnet50 teacher)
#    -> benchmarks/results/throughput_gpu.md
# 2. benchmarks/dataloader.py on the GPU host's CPU cores (views/s per core of the trainer's loader, and with
#    4 and 8 workers) -> benchmarks/results/dataloader_gpu_host.md
# 3. launched training runs per backend -> benchmarks/results/gpu_runs.md: DDP, FSDP (teacher replicated and
#    sharded), DeepSpeed ZeRO-2 and ZeRO-3 with a teacher larger than the student (its own inference engine),
#    each recording the backend, where the teacher went, the losses and the peak GPU memory, and saving a
#    student that must load back with timm.
# Needs: a CUDA machine, `pip install -e ".[dev,deepspeed,bench]"` (or `make install-dev` + those extras).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
NGPU=${NGPU:-$($PY -c "import torch; print(torch.cuda.device_count())")}
RESULTS=benchmarks/results
WORK=${WORK:-$(mktemp -d)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$NGPU" -lt 1 ]; then echo "no CUDA GPU visible" >&2; exit 1; fi
mkdir -p "$RESULTS"

echo "== throughput on GPU"
$PY benchmarks/throughput.py --device cuda --bf16 --channels-last --image-size 224 \
  --student resnet18 --teacher resnet50 --batch-size 128 --workers 8 --steps 30 --warmup 10 --repeats 3 \
  --out "$RESULTS/throughput_gpu.md"
THROUGHPUT_RC=$?

echo "== data path on the host CPU"
OMP_NUM_THREADS=1 $PY benchmarks/dataloader.py --images 512 --repeats 3 --workers 4 8 \
  --out "$RESULTS/dataloader_gpu_host.md" || echo "dataloader benchmark failed (exit $?)" >&2

run() {  # name, accelerate config, extra script args...
  local name=$1 config=$2; shift 2
  echo "== $name"
  $PY -m accelerate.commands.launch --config_file "recipes/accelerate_configs/$config.yaml" \
    --num_processes "$NGPU" --num_machines 1 --mixed_precision bf16 --main_process_port 29511 \
    tests/distributed_run.py --output_dir "$WORK/$name" --bf16 --save --steps 20 --image_size 64 \
    --per_device_batch 32 --optim adamw_torch --learning_rate 1e-3 "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  local loads=no
  if [ $rc -eq 0 ] && $PY -c "import sys, timm; timm.create_model('local-dir:$WORK/$name/student', pretrained=True)"; then
    loads=yes
  fi
  $PY - "$name" "$config" "$rc" "$loads" "$WORK" >> "$RESULTS/gpu_runs.md" <<'PYEOF'
import json, sys
from pathlib import Path
name, config, rc, loads, work = sys.argv[1:]
run = Path(work, name, "run.json")
info = json.loads(run.read_text()) if run.exists() else {}
losses = info.get("losses", [])
print(f"| {name} | {config} | {rc} | {info.get('backend', '-')} x{info.get('num_processes', '-')} | "
      f"{info.get('student', '-')} / {info.get('teacher', '-')} | {info.get('teacher_placement', '-')} "
      f"({info.get('teacher_type', '-')}) | {losses[0] if losses else '-'} -> {losses[-1] if losses else '-'} | "
      f"{info.get('max_memory_allocated_mib', '-')} | {loads} |")
PYEOF
  [ $rc -ne 0 ] && tail -40 "$WORK/$name.log"
  return 0
}

{
  echo "# Launched runs on GPU"
  echo
  echo "Command: \`bash benchmarks/gpu.sh\` ($NGPU x $($PY -c "import torch; print(torch.cuda.get_device_name(0))"))."
  echo "Each run: tests/distributed_run.py, 20 AdamW steps, bf16, 64 px, 32 images per GPU; logs in $WORK."
  echo
  echo "| run | accelerate config | exit | backend | student / teacher | teacher placement | loss first -> last | peak MiB / GPU | saved student loads |"
  echo "|---|---|---|---|---|---|---|---|---|"
} > "$RESULTS/gpu_runs.md"
run ddp ddp --student resnet18 --teacher resnet50
run fsdp_teacher_replicated fsdp --student resnet18 --teacher resnet50
run fsdp_teacher_sharded fsdp --student resnet18 --teacher resnet50 --teacher_placement shard
run zero2 deepspeed_zero2 --student resnet18 --teacher resnet50
run zero3_big_teacher deepspeed_zero3 --student resnet18 --teacher resnet152
cat "$RESULTS/gpu_runs.md"
exit $THROUGHPUT_RC
