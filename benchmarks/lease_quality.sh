#!/usr/bin/env bash
# One GPU lease on a 4-GPU host: the quality table of one ensemble (python -m adafuse_lab quality),
# with the 2-GPU scaling check and the --device auto check on GPUs 0,1 before they join it.
# Run from the repository root after `source benchmarks/gpu_setup.sh`, detached:
#
#   M=qwen2.5-coder-0.5b,smollm2-135m setsid nohup bash benchmarks/lease_quality.sh >/dev/null 2>&1 &
#
# Everything lands in $W (default /root/work); $W/driver.log says how far it got. The quality
# command resumes from its run directories, so a lease that ends early loses only the runs
# being decoded: bring $W/quality back and run the same command again.
#
# Settings (environment): M the members; RESUME a tgz of earlier run directories (as committed
# in benchmarks/results/quality_*/runs_without_traces.tgz) unpacked into $W/quality first;
# SCALING=1 the 2-GPU check (SCALING_LIMIT questions); AUTO=1 the --device auto checks.
set -u
W=${W:-/root/work}
M=${M:-qwen2.5-coder-0.5b,smollm2-135m}
SCALING=${SCALING:-1}
SCALING_LIMIT=${SCALING_LIMIT:-256}
AUTO=${AUTO:-1}
export ADAFUSE_DATA=${ADAFUSE_DATA:-$(pwd)/.gpu-extra/data}
Q="python -m adafuse_lab quality --models $M --work $W/quality --source local --limit 500 --limits gsm8k=all
   --dtype float32 --grid theta=0.5,0.7,0.9"
mkdir -p "$W/bench"
log() { echo "$(date +%T) $*" >> "$W/driver.log"; }
log "start: $M"
if [ -n "${RESUME:-}" ]; then mkdir -p "$W/quality" && tar xzf "$RESUME" -C "$W/quality"; log "resumed from $RESUME"; fi
# The first load of a GGUF member writes its hf/ folder: once here, not by four workers at once.
python -c "import sys; from adafuse_lab.models import load_session as L; [L(m, device='cpu') for m in sys.argv[1:]]" \
    ${M//,/ } > "$W/load.log" 2>&1
$Q --steps plan > "$W/plan.log" 2>&1; log "plan done ($?): $(wc -l < "$W/quality/plan.jsonl") runs"

( $Q --steps decode --gpus 2,3 > "$W/decode23.log" 2>&1; log "decode on 2,3 done ($?)" ) &
( if [ "$SCALING" = 1 ]; then
    CUDA_VISIBLE_DEVICES=0,1 python benchmarks/multi_gpu_check.py --gpus 2 --out "$W/bench/h100x2_scaling.json" -- \
        --task gsm8k --models qwen2.5-coder-0.5b,smollm2-135m --method adafuse --limit "$SCALING_LIMIT" --batch-size 64 \
        --source local > "$W/bench/scaling.log" 2>&1
    log "scaling check done ($?)"
  fi
  if [ "$AUTO" = 1 ]; then
    CUDA_VISIBLE_DEVICES=0,1 timeout 300 python benchmarks/device_auto_check.py --out "$W/bench/h100x2_device_auto.json" \
        --models qwen2.5-coder-0.5b,smollm2-135m --dtype float32 --limit 16 --max-new-tokens 64 > "$W/bench/auto.log" 2>&1
    log "device auto check done ($?)"
    CUDA_VISIBLE_DEVICES=0,1 timeout 400 python benchmarks/device_auto_check.py --out "$W/bench/h100x2_device_auto_random8b.json" \
        --models random:llama-3.1-8b+qwen2.5-coder-0.5b,random:mistral-7b-v0.3+smollm2-135m --theta 0.0 --limit 8 \
        --max-new-tokens 64 > "$W/bench/auto_random.log" 2>&1
    log "device auto check (random 8B) done ($?)"
  fi
  $Q --steps decode --gpus 0,1 > "$W/decode01.log" 2>&1; log "decode on 0,1 done ($?)" ) &
wait
$Q --steps tune,table > "$W/tune_table.log" 2>&1; log "tune and table done ($?)"
