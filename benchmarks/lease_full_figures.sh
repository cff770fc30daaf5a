#!/usr/bin/env bash
# The GPU lease that ran the full notebook parameters (notebooks/params/full.yaml) on a 4-GPU
# machine, with the multi-GPU and speed measurements of the benchmarks issue alongside.
# Run from the repository root after `source benchmarks/gpu_setup.sh`, detached so that it
# outlives the command that starts it:
#
#   setsid nohup bash benchmarks/lease_full_figures.sh >/dev/null 2>&1 &
#
# Needs .gpu-extra/plan.jsonl, written beforehand (on any machine) by
#   python -m adafuse_lab figures --plan --only 01,02,03,04 --work W && cp W/plan.jsonl .gpu-extra/
# Everything lands in $W (default /root/work); $W/driver.log says how far it got.
# On 2026-11-26 (4×H100) step 2's first `figures` failed at once: the notebooks' kernels could
# not import adafuse_lab. gpu_setup.sh now puts the repository root on PYTHONPATH; that lease
# reran the same `figures` command by hand and it passed (logs in
# benchmarks/results/notebooks_full_h100x4/logs/).
set -u
W=${W:-/root/work}
D=$(pwd)/.gpu-extra/data
M=qwen2.5-coder-0.5b,smollm2-135m
export ADAFUSE_DATA=$D
mkdir -p "$W/bench"
log() { echo "$(date +%T) $*" >> "$W/driver.log"; }
worker() { CUDA_VISIBLE_DEVICES=$1 python -m adafuse_lab figures --decode .gpu-extra/plan.jsonl --work "$W" \
             > "$W/worker$1.log" 2>&1; log "worker $1 done ($?)"; }
bench() { local gpu=$1 name=$2; shift 2
          CUDA_VISIBLE_DEVICES=$gpu python -m adafuse_lab bench --task gsm8k --source local --data-dir "$D" \
             --out "$W/bench/$name.json" "$@" > "$W/bench/$name.log" 2>&1; log "bench $name done ($?)"; }
log "start: $(wc -l < .gpu-extra/plan.jsonl) runs to decode"

# 1. Decode every run of the plan: two workers at once, two more after the 2-GPU check.
worker 0 & worker 1 &
( CUDA_VISIBLE_DEVICES=2,3 python benchmarks/multi_gpu_check.py --gpus 2 --out "$W/bench/h100x2_scaling.json" -- \
      --task gsm8k --models $M --method adafuse --limit 128 --batch-size 64 --source local --data-dir "$D" \
      > "$W/bench/h100x2_scaling.log" 2>&1
  log "multi-gpu check done ($?)"
  worker 2 & worker 3 & wait ) &
wait
log "plan decoded"

# 2. The notebooks through papermill (they find every run), and speed measurements beside them.
( CUDA_VISIBLE_DEVICES=0 python -m adafuse_lab figures --work "$W" --out "$W/figures" --cell-timeout 1200 \
      > "$W/figures.log" 2>&1; log "figures done ($?)" ) &
( bench 1 h100_paper_scale_theta0_b32_t256 --models random:llama-3.1-8b+qwen2.5-coder-0.5b,random:mistral-7b-v0.3+smollm2-135m \
      --method adafuse --limit 32 --batch-size 32 --set theta=0.0
  bench 1 h100_paper_scale_theta1_b32_t256 --models random:llama-3.1-8b+qwen2.5-coder-0.5b,random:mistral-7b-v0.3+smollm2-135m \
      --method adafuse --limit 32 --batch-size 32 --set theta=1.0 ) &
( bench 2 h100_adafuse_b1_t256 --models $M --method adafuse --limit 4 --batch-size 1
  bench 2 h100_adafuse_b256_t256 --models $M --method adafuse --limit 256 --batch-size 256 ) &
( bench 3 h100_methods_b64_t256 --models $M --method sweetspan,coolfusion,unite,gac,rerank,single \
      --limit 64 --batch-size 64 ) &
wait
log "all done"
