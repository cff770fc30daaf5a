#!/usr/bin/env bash
# One GPU lease on a host with 2 or 4 GPUs: the quality tables of one or more ensembles (python -m adafuse_lab
# quality), with optional 2-GPU scaling and --device auto checks on GPUs 0,1 before they join in.
# Run from the repository root after `source benchmarks/gpu_setup.sh`, detached:
#
#   ENSEMBLES="qwen2.5-coder-0.5b,smollm2-135m qwen2.5-coder-0.5b,gemma3-270m" \
#       setsid nohup bash benchmarks/lease_quality.sh >/dev/null 2>&1 &
#
# Everything lands in $W (default /root/work); $W/driver.log says how far it got. Every ensemble
# has its folder $W/q<N> (plan, tune files, table) whose runs/ is the shared $W/runs, so the
# members' single runs are decoded once for all ensembles. Each GPU's workers go through the
# plans in the order given, and an ensemble is planned again whenever one of its planned
# tune-half runs is saved (its tuned runs); then each ensemble is tuned and tabled. Everything
# resumes from the run directories: a lease that ends early loses only the runs being decoded.
#
# Settings (environment): RESUME tar archives (gzip or xz, separated by spaces) of earlier run
# directories (paths runs/..., as committed in benchmarks/results/quality/runs_without_traces.txz)
# unpacked into $W first, in order, so a later one's files replace an earlier one's (the traced
# samples of a partly decoded run, packed as docs/GPU.md step 6 says, for one); SCALING=1 the 2-GPU check
# (SCALING_LIMIT questions); AUTO=1 the --device auto checks; BENCH=1 the speed table's missing
# rows on GPUs 0 and 1 (see below; BASELINES the methods timed at batch 256); PER_GPU decoding
# processes per GPU. To stop the workers from another command: pkill -f "[f]igures --decode" (the brackets
# keep pkill off that command).
set -u
# The device tool copies the working tree afresh at every call, and files vanish for a moment
# under running jobs: a lease lost its first workers ("No module named adafuse_lab.runs") and
# its scaling check to the staging calls made meanwhile. So the script runs from its own copy.
if [ -z "${LEASE_COPY:-}" ]; then
  export LEASE_COPY=${LEASE_COPY_DIR:-/root/lease_repo}
  rm -rf "$LEASE_COPY" && mkdir -p "$LEASE_COPY" || exit 1
  tar -C . --exclude=./.gpu-stage --exclude=./runs --exclude=./.git -cf - . | tar -C "$LEASE_COPY" -xf - || exit 1
  cd "$LEASE_COPY" || exit 1
  export PYTHONPATH=$LEASE_COPY:${PYTHONPATH:-}
  exec bash benchmarks/lease_quality.sh
fi
W=${W:-/root/work}
ENSEMBLES=${ENSEMBLES:-qwen2.5-coder-0.5b,smollm2-135m}
SCALING=${SCALING:-0}
# TriviaQA, 1280 questions: 20 batches of 64, 10 per GPU, and about 4 minutes on one GPU, long
# enough that start-up and merging (about 20 s with torchrun, 16 s without) do not decide the ratio.
SCALING_TASK=${SCALING_TASK:-triviaqa}
SCALING_LIMIT=${SCALING_LIMIT:-1280}
AUTO=${AUTO:-0}
BENCH=${BENCH:-0}
# Decoding processes per GPU. The engine waits on the host for about 40% of a step at batch 64
# (docs/lab_log.md), so other processes can use the GPU meanwhile. Lease 3 ran two per GPU, lease 4
# three: with gemma3-270m (262k-word vocabulary, fp32) three did not fit in 80 GB, 87 batches were
# halved after running out of memory and 192 CUDA-graph captures failed. Neither is timed against one.
PER_GPU=${PER_GPU:-2}
export ADAFUSE_DATA=${ADAFUSE_DATA:-$(pwd)/.gpu-extra/data}
OPTS=${OPTS:-"--source local --limit 500 --limits gsm8k=all --dtype float32 --grid theta=0.5,0.7,0.9"}
mkdir -p "$W/bench" "$W/runs"
log() { echo "$(date +%T) $*" >> "$W/driver.log"; }
log "start: $ENSEMBLES"
# Python's tarfile reads gzip and xz alike, whatever tar programs the machine has.
for A in ${RESUME:-}; do
  python -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$A" "$W" || exit 1
  log "resumed from $A: $(ls -d $W/runs/*/* | wc -l) run dirs"
done
# The first load of a GGUF member writes its hf/ folder: once here (one process per member, at
# once), not by several workers at the same time.
for m in $(echo $ENSEMBLES | tr ', ' '\n\n' | sort -u); do
  python -c "import sys; from adafuse_lab.models import load_session as L; L(sys.argv[1], device='cpu')" "$m" \
      > "$W/load_$m.log" 2>&1 &
done
wait
log "members loaded once: $(ls -d ${ADAFUSE_CACHE:-~/.cache/adafuse_lab}/models/*/hf 2>/dev/null | wc -l) hf folders"
i=0; DIRS=()
for E in $ENSEMBLES; do
  i=$((i + 1)); D=$W/q$i; DIRS+=("$D"); mkdir -p "$D"; ln -sfn "$W/runs" "$D/runs"; echo "$E" > "$D/members"
  rm -f "$D/.planned" "$D/.final"  # marks of an earlier run of the script in this $W
done
plan_step() {  # ensemble folder $1: its plan.jsonl, on the CPU (about 25 s of papermill)
  CUDA_VISIBLE_DEVICES= python -m adafuse_lab quality --models "$(cat "$1/members")" --work "$1" $OPTS --steps plan \
      >> "$1/plan.log" 2>&1
}
# The plans are made at once; the workers start when all are made.
for D in "${DIRS[@]}"; do
  rm -f "$D/plan.log"
  ( plan_step "$D"; log "plan $(cat "$D/members") done ($?): $(wc -l < "$D/plan.jsonl") runs"; touch "$D/.planned" ) &
done
PLANS=(); for D in "${DIRS[@]}"; do PLANS+=("$D/plan.jsonl"); done
# Once one of an ensemble's planned tune-half runs is saved (or every planned run is), it is
# planned again: that adds the runs of the settings a complete tune half chose, on the report
# half, and the workers (which read the plans again after every run, the first ensemble's first)
# take them up next. Otherwise the tuned runs would wait for the tune step after the last plan,
# which a lease may not reach. (Lease 8 waited for the whole plan and so decoded none: De→En's
# tune half was done 13 minutes in, 7 before the end, and its chosen run never started.)
replan() {
  local D left
  while :; do
    left=0
    for D in "${DIRS[@]}"; do
      [ -e "$D/.final" ] && continue
      left=1
      [ -e "$D/.planned" ] || continue
      python -c "import sys; from adafuse_lab.quality import replan_due as s; sys.exit(not s(sys.argv[1]))" "$D" || continue
      plan_step "$D"
      log "re-plan $(cat "$D/members") ($?): $(wc -l < "$D/plan.jsonl") runs"
      [ -s "$D/plan.jsonl" ] || touch "$D/.final"
    done
    [ $left = 1 ] || return
    sleep 10
  done
}
replan &
all_final() { local D; for D in "${DIRS[@]}"; do [ -e "$D/.final" ] || return 1; done; }
worker() {  # $PER_GPU processes on GPU $1, each through every plan (each run is locked by one)
  local n D
  for n in $(seq 1 "$PER_GPU"); do
    ( for D in "${DIRS[@]}"; do until [ -e "$D/.planned" ]; do sleep 2; done; done
      # A decoder stops when no run is left to take; a later re-plan may add some (the tuned
      # runs), so it starts again until every ensemble's plan is final (empty once re-planned).
      until all_final; do
        CUDA_VISIBLE_DEVICES=$1 python -m adafuse_lab figures --decode "${PLANS[@]}" --work "$W" \
            >> "$W/worker$1_$n.log" 2>&1
        sleep 15
      done ) &
  done
  wait
  log "worker(s) on GPU $1 done"
}
# GPUs 0 and 1 join after the checks; the others (a 4-GPU host) decode from the start.
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
log "$NGPU GPU(s)"
for g in $(seq 2 $((NGPU - 1))); do worker $g & done
( if [ "$SCALING" = 1 ]; then
    CUDA_VISIBLE_DEVICES=0,1 python benchmarks/multi_gpu_check.py --gpus 2 --out "$W/bench/h100x2_scaling_${SCALING_TASK}${SCALING_LIMIT}.json" -- \
        --task "$SCALING_TASK" --models qwen2.5-coder-0.5b,smollm2-135m --method adafuse --limit "$SCALING_LIMIT" --batch-size 64 \
        --source local > "$W/bench/scaling.log" 2>&1
    log "scaling check done ($?)"
  fi
  if [ "$AUTO" = 1 ]; then
    CUDA_VISIBLE_DEVICES=0,1 timeout 300 python benchmarks/device_auto_check.py --out "$W/bench/h100x2_device_auto.json" \
        --models qwen2.5-coder-0.5b,smollm2-135m --dtype float32 --limit 16 --max-new-tokens 64 > "$W/bench/auto.log" 2>&1
    log "device auto check done ($?)"
    CUDA_VISIBLE_DEVICES=0,1 timeout 300 python benchmarks/device_auto_check.py --out "$W/bench/h100x2_device_auto_random8b.json" \
        --models random:llama-3.1-8b+qwen2.5-coder-0.5b,random:mistral-7b-v0.3+smollm2-135m --theta 0.0 --limit 8 \
        --max-new-tokens 64 > "$W/bench/auto_random.log" 2>&1
    log "device auto check (random 8B) done ($?)"
  fi
  if [ "$BENCH" = 1 ]; then  # the speed table's missing rows, then the GPUs join the workers
    bench() { local gpu=$1 b=$2 att=$3 name=$4 methods=${5:-adafuse} n=${6:-$2} models=${7:-qwen2.5-coder-0.5b,smollm2-135m}
      shift $(( $# < 7 ? $# : 7 ))  # the rest: extra bench options
      CUDA_VISIBLE_DEVICES=$gpu python -m adafuse_lab bench --models $models --method $methods \
          --task gsm8k --source local --limit $n --batch-size $b --max-new-tokens 256 --attention $att "$@" \
          --out "$W/bench/$name.json" > "$W/bench/$name.log" 2>&1
      log "bench $name done ($?)"; }
    # Engine v2 (benchmarks/results/engine_v2/, lease_engine_v2.sh): GPU 0 AdaFuse at batch 64,
    # GPU 1 every baseline at batch 256; attention "auto" measures its backend per member.
    BASELINES=${BASELINES:-sweetspan,coolfusion,unite,gac,rerank,single}
    ( bench 0 64 auto h100_adafuse_b64_t256; worker 0 ) &
    ( bench 1 256 auto h100_methods_b256_t256_${BASELINES//,/_} $BASELINES 256; worker 1 ) &
    wait
  else
    worker 0 & worker 1 & wait
  fi ) &
wait  # the workers stop once every plan is final, and so does the re-planning
for D in "${DIRS[@]}"; do
  python -m adafuse_lab quality --models "$(cat "$D/members")" --work "$D" $OPTS --steps tune,table > "$D/tune_table.log" 2>&1
  log "tune and table $(cat "$D/members") done ($?)"
done
