#!/usr/bin/env bash
# Engine v2 measurements on one GPU (issue 20), in the steps of one lease. Staged chunks and
# .gpu-extra as docs/GPU.md says; run each step with the device tool: bash benchmarks/lease_engine_v2.sh STEP
#   probe   adafuse and single at batch 64 with both profilers (real members)
#   smoke   the decoding/attention tests on CUDA (tiny members) and a tiny-member bench
#   main    floor_bench + attn_bench anchors, every method at batch 64 (real members)
#   scale   batch 256 and batch 1 (about 6 minutes; the b1 part may outlast a short call)
#   b1rest  batch 1 for unite, gac, sweetspan, coolfusion, rerank (2 questions)
#   paper   paper-scale random members at batch 32, theta 0 and 1
# After the feed cap and the late greedy read (second lease, files h200_engine_v3_*):
#   check   the runtime tests on CUDA (tiny members), then main3
#   main3   anchors, adafuse and single at batch 64 against generate, with cProfile
#   knobs   adafuse at batch 64 with feed_cap 0 / 8 / 32 and kv_slack 1024 (no generate)
#   others  the other methods at batch 64 (no generate), and every method at batch 1 (2 questions)
#   scale3  adafuse and single at batch 256 (no generate)
# With compile=true (torch.compile of the members' decode forwards; files h200_engine_v4_*):
#   check4  GSM8K in fp32, compile off and on: the same answers? single on 32 questions; adafuse
#           on 8 questions of 64 tokens (32 questions of 256 tokens outlasted a 560 s call)
#   main4   anchors; adafuse and single at batch 64 against generate (compile off), then compile on
#   prof4   torch.profiler of single at batch 64, eager forwards (no graphs), compile off and on
#   scale4  batch 256 and paper-scale theta 0 / 1 with compile on (no generate)
# With lanes (files h200_engine_v5_* and engine_v5/h100_*): steps lanes5, scale5, comp5, others5,
# lanes6 and check6 ran at commit d358c5b; lanes were removed after them (docs/engine_log.md, engine v5).
#   prof6   where AdaFuse's step goes: torch.profiler of one 64-token b64 batch without graphs (GPU
#           time by kernel), then cProfile of the same batch with graphs (host time)
#   gpu6    adafuse, single and unite at batch 64 (no generate; after the host cuts): model_gpu_s against decode_s says how much
#           of AdaFuse's decode the GPU spends in the members' forwards (prof6's profiler did not
#           finish a 64-token batch in 230 s)
# With the triton tree-attention backend (files engine_v7/):
#   tri7a   the attention tests on CUDA (triton compiled, against the reference), then one layer
#           of each member's shape: SDPA backends against triton's block sizes (benchmarks/diag/attn_tree.py)
#   tri7b   adafuse (with generate), single and unite at batch 64 on triton; adafuse on sdpa_gqa
#   tri7c   adafuse at batch 256 on triton; the other methods at batch 64 on triton (no generate)
#   host6   cProfile of one adafuse batch at batch 64 (64 new tokens, with graphs): the host side of gpu6
# After the host cuts of 2026-12-05 (one copy per step's index lists, slots reused, no prefix copies; files engine_v8/):
#   v8a     adafuse and single at batch 64 on triton, against both members' generate (default and no-cuDNN)
#   v8b     adafuse at batch 256 on triton; every other method at batch 64 on triton (no generate)
#   v8c     single and adafuse at batch 64 on auto (per step length), no generate
#   v8d     single on auto at batch 64, then adafuse at batch 256 on triton (both without generate)
#   host8   cProfile of one adafuse batch on triton after the host cuts (64 new tokens, as host6)
# Where an engine forward's time goes (files engine_v9/):
#   cost9   benchmarks/diag/forward_cost.py: one member forward by tokens per row (1 .. 32) on the
#           engine's runtime, replay alone and with its host plan; both members one stream against two;
#           kernels of one eager forward of 16 tokens per row
#   v9      early scoring: adafuse and single at batch 64 on auto with generate; adafuse with
#           early_scoring=false; the floor; then cost9
#   v9c     adafuse at batch 256 on auto (no generate); every other method at batch 64 on auto
#   v9e     after the reorder (each member's early score streams planned just before its forward):
#           adafuse at batch 64 and 256 on auto, early scoring on and off, no generate
#   b1v9    every method at batch 1 (2 questions) with generate (issue 20, target 4's b1 column)
# After own tokens for own texts, bisection, and the prefetched peeks (files engine_v10/):
#   v10a    anchors (floor_bench, attn_bench); adafuse and single at batch 64 with generate;
#           adafuse at batch 64 with early_scoring=false
#   v10b    adafuse at batch 256, early scoring on and off (no generate)
#   v10c    the other methods at batch 64 (no generate); every method at batch 1 (2 questions, with generate)
#   paper10 paper-scale random members at batch 32, theta 0 and 1, with generate
#   v10m    (ran at commit c08d8a4) micro-batches, measured and removed: BENCHMARKS.md, engine v10
# After UniTE's one tokenizer call per step and branch-only groups (files engine_v11/):
#   v11a    anchors; adafuse and single at batch 64 with generate; adafuse at batch 256 (auto and triton)
#   v11old  the same host, commit f47963b (engine v8's lease; its package in .gpu-extra/old, made by
#           `git archive f47963b adafuse_lab | tar -x -C .gpu-extra/old`): adafuse at 64 and 256, unite at 64
#   v11c    the other methods at batch 64 (no generate); every method at batch 1 (2 questions, with generate)
#   q11     what a quality table costs on this engine: `run` of AdaFuse and of qwen alone, fp32, batch 64,
#           all 300 GSM8K dev rows and 500 TriviaQA rows (seconds per question, for the plan of issue 23)
# After the triton kernel's column chunks (flash-decoding split; files engine_v12/):
#   v12k    the attention tests on CUDA; attn_tree at batch 64 for both members' shapes, 256 for qwen (no models)
#   v12     the engine lease, in order of need: adafuse and single at batch 64 with generate; 152d14e
#           (package in .gpu-extra/old) at 64; this commit at 64 again (warm kernel cache); adafuse at
#           256; the anchors (floor_bench, attn_bench). Files go to /tmp/v12 and,
#           packed after each part, to $OUT/v12.tgz (a call brings back only a few files)
# After the own-candidate change (f9f3f47; files engine_v14/):
#   v13     that change against its parent e42ed9b (package in .gpu-extra/old, made by
#           `git archive e42ed9b adafuse_lab | tar -x -C .gpu-extra/old`, then this commit's bench.py
#           copied over it for --dtype) on one host, AdaFuse at batch
#           64 in bf16 and in fp32 (in fp32 the answers of the two should agree, so the forwards
#           compare like with like); the first run only warms the Triton cache
# The whole engine re-timed (issue 20's five targets; files engine_v14/; ran at commit dae4111, whose
# steps v14 and v14m also ran adafuse with member_streams=false and a CUDA test of member_streams:
# member streams were removed after the lease, BENCHMARKS.md engine v14). Each step packs
# its files into $OUT/STEP.tgz after each part (a call brings back at most 8 files):
#   v14     adafuse and single at batch 64 with generate; the same again (warm Triton cache; then a cProfile
#           of one 64-token adafuse batch: where the host time goes); adafuse at batch 256; the anchors
#           (floor_bench, attn_bench)
#   v14m    the other methods at batch 64 (no generate); every method at batch 1 (2 questions, with generate)
#   v14p    paper-scale random members at batch 32, theta 0 and 1, with generate (ran past a 480 s call
#           and brought nothing back): `... v14p 0.0`, then `... v14p 1.0` (without generate, which
#           theta does not change), one 600 s call each. Needs no staging since 2026-12-07: the
#           random members' tokenizers and end ids come from .gpu-extra (models.load_tokens)
#   v14o    step v13 (this change against e42ed9b, bf16 and fp32), files packed (not run as written: the
#           lease ran the command in BENCHMARKS.md "Engine v14" instead, without v13's warm-up run)
# For the next lease (engine v15):
#   cuda15  the engine's CUDA-only tests (tiny members on the GPU, no staging needed): graphs that
#           outlive the other member's widening compactions (pytorch/pytorch#193402), first in the lease
#   v15a    member turns (each member plans and launches its forward while the GPU runs the other's):
#           cuda15; adafuse and single at batch 64 with generate; adafuse at batch 64 again (warm Triton
#           cache) with turns and without (member_turns=false), and at 256 with turns, no generate
#   v15t    no staging: cuda15, then the tiny members on CUDA, adafuse with turns twice and without:
#           do reads still wait (sync_reads: peeks, scores), and are the answers the same each time?
#   v15b    after v15a (turns slower: reads that waited for the other member's forward; answers that
#           depended on timing): the same with every complete score stream prefetched, copies landing
#           only at a member's own turn, and retired graphs kept alive; adafuse cold and warm (same answers?),
#           no generate (a short lease); b64 without turns and b256 with and without
# SmallGraphs (peek rows and token scores between forwards as captured graphs) and the host cuts since, against d7a104d (files engine_v16/):
#   v16h    no staging: the CUDA tests of graphs; tiny members on CUDA (host-bound), parent then this commit
#   v16b    staged: the same tests; adafuse b64, b256, b64 with turns, parent then this commit
#   v17p    staged: several processes on one GPU (run under torchrun, runs.run_sharded): 256 questions
#           as 4 x 64, 1 x 64 (four batches in turn), 2 x 128, 1 x 256; 64 questions as 2 x 32 and 1 x 64;
#           then the members' generate on those 64 (bench single)
# Batches in flight (decoding.batches_in_flight: batches take turns step by step, each on a CUDA stream;
# files engine_v18/):
#   v18f    staged, with .gpu-extra/base = b6760d5 (captures through torch.cuda.graph): the CUDA tests of
#           streams and graphs; adafuse on 256 GSM8K questions at b64 with 1 and 2 batches in flight, the
#           base's then HEAD's (captures without the device sync) (no generate)
#   v18g    staged: as v18f, HEAD only: b128 with 2 in flight, b256 with 1, b64 with 4
#   v19t    no staging: the CUDA tests of streams and graphs alone (a lease's first call, carry .gpu-extra:
#           graphs.capture's refactor, 803e8cc, has not run on a GPU yet)
#   v19r    staged: the CUDA tests of streams and graphs (graphs.capture took in the warm-up after the v18
#           lease); `run` (the quality runs' path, not bench) on 256 GSM8K questions at b64 with 2 batches in
#           flight (the default since engine v18), then 1: same samples.jsonl bytes?; target 2's 64 questions
#           with the members' generate; a cProfile of one b64 batch (the host, the bottleneck); the anchors;
#           b256 with member turns (target 3); the 64 questions as two batches of 32 in flight; `run` b128
#           with 2; two processes under torchrun, each with 2 in flight
# Buffers and graphs reused across batches (decoding.runtime.reuse; files engine_v20/):
#   v20t    no staging: the CUDA tests (reuse included); tiny members, 256 questions at b64, reuse on then off
#   v20     staged, .gpu-extra/base = 89d0f70 (this session's start): the CUDA tests (reuse included); a
#           warm-up; adafuse on 256 questions at b64 (2 in flight): this commit, the base, then this
#           commit with reuse_buffers off (the prefill without a device sync, and prefetch covering the
#           score streams that can win, in both: sync_reads in the JSON counts the peeks that still wait);
#           target 2's 64 questions with generate
#   v20b    after v20 on the same host: the 64 questions as two batches of 32 in flight; the anchors; b256
#   v20r    staged, after v20 on the same host: `run` (the quality runs' path) on 256 questions at b64 with 2
#           in flight, this commit (every unfinished batch in one decoding call: the next batch starts as soon
#           as one ends, and takes over its buffers) against the base (batches in groups of 2, one call each);
#           decode seconds and samples.jsonl bytes of each
#   v18p    no staging: the tests; paper-scale members (random 8B-class, as v14p) at theta 1, b32, 64 questions,
#           64 new tokens, with 1 then 2 batches in flight
#   v18s    the same, short (a lease with little device time left): the tests; warm-up; on 128 questions b64 with 1
#           and 2 in flight; on 256 questions b128 with 2 and 1
source benchmarks/gpu_setup.sh
O=${OUT:-/tmp/out}; mkdir -p $O
D="--task gsm8k --source local --data-dir .gpu-extra/data --max-new-tokens 256"
M=qwen2.5-coder-0.5b,smollm2-135m
ALL=adafuse,single,unite,gac,sweetspan,coolfusion,rerank
# steps that time a change against a base commit run its package from .gpu-extra/base (gpu_prepare.sh BASE)
ROOT=$(pwd); BASE=$ROOT/.gpu-extra/base
base_py() { (cd $BASE && PYTHONPATH=/tmp/site:$BASE python "$@"); }
# the CUDA tests of streams, graphs and batches in flight (tiny members), within $1 seconds
cuda_tests() { timeout $1 python -m pytest -q -p no:cacheprovider tests/test_decoding.py \
    -k "in_flight or graphs_survive or small_graphs or reuse"; }
# steps v10c and v11c: the other methods at batch 64 (no generate); every method at batch 1 (with generate)
others_and_b1() {
  python -m adafuse_lab bench --models $M --method unite,gac,sweetspan,coolfusion,rerank $D --limit 64 --batch-size 64 \
      --no-generate --out $O/engine_v$1_others_b64_t256.json > $O/v$1c_others.log 2>&1
  python benchmarks/bench_summary.py $O/engine_v$1_others_b64_t256.json
  python -m adafuse_lab bench --models $M --method $ALL $D --limit 2 --batch-size 1 \
      --out $O/engine_v$1_methods_b1_t256.json > $O/v$1c_b1.log 2>&1
  python benchmarks/bench_summary.py $O/engine_v$1_methods_b1_t256.json
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case $1 in
probe)
  python -c "from adafuse_lab.models import load_session as L; L('qwen2.5-coder-0.5b'); L('smollm2-135m')" 2>&1 | grep -v "Loading weights" | tail -3
  python -m adafuse_lab bench --models $M --method adafuse,single $D --limit 64 --batch-size 64 --cprofile --profile \
      --out $O/h200_engine_v2_probe_b64_t256.json 2>&1 | grep -v "Loading weights" | tail -150 ;;
smoke)
  timeout 300 python -m pytest -q -p no:cacheprovider tests/test_attention.py tests/test_decoding.py tests/test_endings.py 2>&1 | tail -25
  # tiny members load on the CPU unless asked: --device cuda (a 2026-12-04 smoke run timed the CPU)
  python -m adafuse_lab bench --models tiny:bpe,tiny:spm --device cuda --method single,adafuse,unite,gac,rerank --task gsm8k \
      --source local --data-dir data --limit 64 --batch-size 64 --max-new-tokens 64 --out $O/tiny_b64.json 2>&1 | grep -v Warning | tail -12 ;;
main)
  timeout 150 python -m pytest -q -p no:cacheprovider tests/test_attention.py 2>&1 | tail -3
  python -c "from adafuse_lab.models import load_session as L; L('qwen2.5-coder-0.5b'); L('smollm2-135m')" 2>&1 | grep -v "Loading weights" | tail -3
  python .gpu-extra/floor_bench.py qwen2.5-coder-0.5b --out $O/floor_qwen05_b64.json 2>&1 | tail -4
  python .gpu-extra/attn_bench.py --out $O/attn_b64.json 2>&1 | tail -12
  python -m adafuse_lab bench --models $M --method $ALL $D --limit 64 --batch-size 64 --cprofile \
      --out $O/h200_engine_v2_methods_b64_t256.json 2>&1 | grep -v "Loading weights" | tail -80 ;;
scale)
  python -m adafuse_lab bench --models $M --method adafuse,single $D --limit 256 --batch-size 256 \
      --out $O/h200_engine_v2_b256_t256.json 2>&1 | grep -v "Loading weights" | tail -12
  # batch 1: 4 questions one at a time took AdaFuse 19 s and single 2.5 s on 2026-12-04; the
  # other methods come after them in one file (the first lease ran out before them)
  python -m adafuse_lab bench --models $M --method $ALL $D --limit 4 --batch-size 1 \
      --out $O/h200_engine_v2_methods_b1_t256.json 2>&1 | grep -v "Loading weights" | tail -12 ;;
b1rest)  # batch 1 for the methods the first lease did not reach
  python -m adafuse_lab bench --models $M --method unite,gac,sweetspan,coolfusion,rerank $D --limit 2 --batch-size 1 \
      --out $O/h200_engine_v2_methods_b1_rest_t256.json 2>&1 | grep -v "Loading weights" | tail -12 ;;
check)
  timeout 200 python -m pytest -q -p no:cacheprovider tests/test_attention.py \
      tests/test_decoding.py -k "attention or greedy or feed_cap or stream_scores or batched" 2>&1 | tail -4
  bash $0 main3 ;;
main3)
  python -c "from adafuse_lab.models import load_session as L; L('qwen2.5-coder-0.5b'); L('smollm2-135m')" 2>&1 | grep -v "Loading weights" | tail -3
  python .gpu-extra/floor_bench.py qwen2.5-coder-0.5b --out $O/floor_qwen05_b64.json 2>&1 | tail -4
  python .gpu-extra/attn_bench.py --out $O/attn_b64.json 2>&1 | tail -12
  python -m adafuse_lab bench --models $M --method adafuse,single $D --limit 64 --batch-size 64 --cprofile \
      --out $O/h200_engine_v3_b64_t256.json 2>&1 | grep -v "Loading weights" | tail -80 ;;
knobs)
  # file names without "=": the device tool does not bring such names back
  for kv in feed_cap=0 feed_cap=8 feed_cap=32 kv_slack=1024; do
    python -m adafuse_lab bench --models $M --method adafuse $D --limit 64 --batch-size 64 --no-generate --set $kv \
        --out $O/h200_engine_v3_b64_t256_$(echo $kv | tr -d '=_').json 2>&1 | grep -v "Loading weights" | tail -3
  done ;;
others)
  python -m adafuse_lab bench --models $M --method unite,gac,sweetspan,coolfusion,rerank $D --limit 64 --batch-size 64 \
      --no-generate --out $O/h200_engine_v3_others_b64_t256.json 2>&1 | grep -v "Loading weights" | tail -8
  python -m adafuse_lab bench --models $M --method $ALL $D --limit 2 --batch-size 1 \
      --out $O/h200_engine_v3_methods_b1_t256.json 2>&1 | grep -v "Loading weights" | tail -12 ;;
scale3)
  python -m adafuse_lab bench --models $M --method adafuse,single $D --limit 256 --batch-size 256 --no-generate \
      --out $O/h200_engine_v3_b256_t256.json 2>&1 | grep -v "Loading weights" | tail -12 ;;
paper)
  P=random:llama-3.1-8b+qwen2.5-coder-0.5b,random:mistral-7b-v0.3+smollm2-135m
  for th in 0.0 1.0; do
    python -m adafuse_lab bench --models $P --method adafuse $D --limit 32 --batch-size 32 --set theta=$th \
        --out $O/h200_engine_v3_paper_theta${th}_b32_t256.json 2>&1 | grep -v "Loading weights" | tail -8
  done ;;
check4)
  python -c "from adafuse_lab.models import load_session as L; L('qwen2.5-coder-0.5b'); L('smollm2-135m')" 2>&1 | grep -v "Loading weights" | tail -3
  for meth in single adafuse; do
    n=32; t=256; [ $meth = adafuse ] && n=8 t=64
    for c in false true; do
      python -m adafuse_lab run --task gsm8k --models $M --method $meth --source local --data-dir .gpu-extra/data \
          --limit $n --batch-size $n --max-new-tokens $t --dtype float32 --no-progress --set compile=$c \
          --out /tmp/c4_${meth}_$c > $O/check4_${meth}_$c.log 2>&1
    done
    python benchmarks/same_samples.py /tmp/c4_${meth}_false/samples.jsonl /tmp/c4_${meth}_true/samples.jsonl \
        2>&1 | tee $O/compile_check_${meth}_fp32.txt
  done ;;
main4)
  bash $0 main3_anchors
  python -m adafuse_lab bench --models $M --method adafuse,single $D --limit 64 --batch-size 64 \
      --out $O/h200_engine_v4_b64_t256.json 2>&1 | grep -v "Loading weights" | tail -8
  python -m adafuse_lab bench --models $M --method adafuse,single $D --limit 64 --batch-size 64 --no-generate \
      --set compile=true --out $O/h200_engine_v4_b64_t256_compiled.json 2>&1 | grep -v "Loading weights" | tail -8 ;;
main3_anchors)
  python -c "from adafuse_lab.models import load_session as L; L('qwen2.5-coder-0.5b'); L('smollm2-135m')" 2>&1 | grep -v "Loading weights" | tail -3
  python .gpu-extra/floor_bench.py qwen2.5-coder-0.5b --out $O/floor_qwen05_b64.json 2>&1 | tail -4
  python .gpu-extra/attn_bench.py --out $O/attn_b64.json 2>&1 | tail -12 ;;
prof4)
  for c in false true; do
    python -m adafuse_lab bench --models $M --method single $D --limit 64 --batch-size 64 --profile --profile-only \
        --set cuda_graphs=false --set compile=$c --out $O/h200_engine_v4_single_profile_compile_$c.json 2>&1 \
        | grep -v "Loading weights" | tail -3
  done ;;
scale4)
  python -m adafuse_lab bench --models $M --method adafuse,single $D --limit 256 --batch-size 256 --no-generate \
      --set compile=true --out $O/h200_engine_v4_b256_t256_compiled.json 2>&1 | grep -v "Loading weights" | tail -6
  P=random:llama-3.1-8b+qwen2.5-coder-0.5b,random:mistral-7b-v0.3+smollm2-135m
  for th in 0.0 1.0; do
    python -m adafuse_lab bench --models $P --method adafuse $D --limit 32 --batch-size 32 --set theta=$th --set compile=true \
        --out $O/h200_engine_v4_paper_theta${th}_b32_t256_compiled.json 2>&1 | grep -v "Loading weights" | tail -6
  done ;;
prof6)
  python -c "from adafuse_lab.models import load_session as L; L('qwen2.5-coder-0.5b'); L('smollm2-135m')" 2>&1 | grep -v "Loading weights" | tail -3
  python -m adafuse_lab bench --models $M --method adafuse $D --limit 64 --batch-size 64 --profile --profile-only \
      --set cuda_graphs=false --out $O/h100_engine_v5_adafuse_b64_t64_profile_eager.json > $O/prof6_eager.log 2>&1
  grep "Self CUDA time total\|Self CPU time total" $O/prof6_eager.log
  python -m adafuse_lab bench --models $M --method adafuse $D --limit 64 --batch-size 64 --cprofile --profile-only \
      --out $O/h100_engine_v5_adafuse_b64_t64_cprofile.json > $O/prof6_cprofile.log 2>&1
  grep "function calls" $O/prof6_cprofile.log ;;
gpu6)
  python -c "from adafuse_lab.models import load_session as L; L('qwen2.5-coder-0.5b'); L('smollm2-135m')" 2>&1 | grep -v "Loading weights" | tail -3
  python -m adafuse_lab bench --models $M --method adafuse,single,unite $D --limit 64 --batch-size 64 --no-generate \
      --out $O/engine_v6_b64_t256.json > $O/gpu6.log 2>&1; tail -4 $O/gpu6.log
  python benchmarks/bench_summary.py $O/engine_v6_b64_t256.json ;;
tri7a)
  python -m pytest -q -x tests/test_attention.py > $O/tri7a_tests.log 2>&1; tail -3 $O/tri7a_tests.log
  python benchmarks/diag/attn_tree.py --out $O/attn_tree_qwen05_b64.json 2>&1 | tee $O/attn_tree.log
  python benchmarks/diag/attn_tree.py --heads 9 --kv-heads 3 --out $O/attn_tree_smollm2_b64.json 2>&1 | tee -a $O/attn_tree.log ;;
tri7b)
  python -m adafuse_lab bench --models $M --method adafuse,single,unite $D --limit 64 --batch-size 64 --attention triton \
      --out $O/engine_v7_triton_b64_t256.json > $O/tri7b.log 2>&1; tail -3 $O/tri7b.log
  python -m adafuse_lab bench --models $M --method adafuse $D --limit 64 --batch-size 64 --attention sdpa_gqa --no-generate \
      --out $O/engine_v7_sdpa_gqa_b64_t256.json > $O/tri7b_sdpa.log 2>&1; tail -2 $O/tri7b_sdpa.log
  python benchmarks/bench_summary.py $O/engine_v7_*b64_t256.json ;;
tri7c)
  python -m adafuse_lab bench --models $M --method adafuse $D --limit 256 --batch-size 256 --attention triton --no-generate \
      --out $O/engine_v7_triton_b256_t256.json > $O/tri7c_b256.log 2>&1; tail -2 $O/tri7c_b256.log
  python -m adafuse_lab bench --models $M --method gac,sweetspan,coolfusion,rerank $D --limit 64 --batch-size 64 --attention triton \
      --no-generate --out $O/engine_v7_triton_others_b64_t256.json > $O/tri7c_others.log 2>&1; tail -2 $O/tri7c_others.log
  python benchmarks/bench_summary.py $O/engine_v7_triton_b256_t256.json $O/engine_v7_triton_others_b64_t256.json ;;
v8a)
  python -m adafuse_lab bench --models $M --method adafuse,single $D --limit 64 --batch-size 64 --attention triton \
      --out $O/engine_v8_triton_b64_t256.json > $O/v8a.log 2>&1; tail -3 $O/v8a.log
  python benchmarks/bench_summary.py $O/engine_v8_triton_b64_t256.json
  # the anchors, in the same lease (the hardware floor, HF's forward eager and as a graph; one attention layer)
  timeout 150 python .gpu-extra/floor_bench.py qwen2.5-coder-0.5b --out $O/floor_qwen05_b64.json > $O/floor.log 2>&1; tail -4 $O/floor.log
  timeout 90 python .gpu-extra/attn_bench.py --out $O/attn_b64.json > $O/attn.log 2>&1; tail -12 $O/attn.log ;;
v8b)
  python -m adafuse_lab bench --models $M --method adafuse $D --limit 256 --batch-size 256 --attention triton --no-generate \
      --out $O/engine_v8_triton_b256_t256.json > $O/v8b_b256.log 2>&1; tail -2 $O/v8b_b256.log
  python -m adafuse_lab bench --models $M --method unite,gac,sweetspan,coolfusion,rerank $D --limit 64 --batch-size 64 \
      --attention triton --no-generate --out $O/engine_v8_triton_others_b64_t256.json > $O/v8b_others.log 2>&1; tail -2 $O/v8b_others.log
  python benchmarks/bench_summary.py $O/engine_v8_triton_b256_t256.json $O/engine_v8_triton_others_b64_t256.json ;;
v8c)  # auto: sdpa_gqa for one-token forwards, triton for longer ones (one/many), without generate
  python -m adafuse_lab bench --models $M --method single,adafuse $D --limit 64 --batch-size 64 --attention auto --no-generate \
      --out $O/engine_v8_auto_b64_t256.json > $O/v8c.log 2>&1; grep "^attention" $O/v8c.log; tail -2 $O/v8c.log
  python benchmarks/bench_summary.py $O/engine_v8_auto_b64_t256.json ;;
v8d)  # the short form of v8c and v8b for a lease with little time: single on auto, then adafuse at batch 256
  python -m adafuse_lab bench --models $M --method single $D --limit 64 --batch-size 64 --attention auto --no-generate \
      --out $O/engine_v8_auto_single_b64_t256.json > $O/v8d_single.log 2>&1; grep "^attention" $O/v8d_single.log
  python benchmarks/bench_summary.py $O/engine_v8_auto_single_b64_t256.json
  python -m adafuse_lab bench --models $M --method adafuse $D --limit 256 --batch-size 256 --attention triton --no-generate \
      --out $O/engine_v8_triton_b256_t256.json > $O/v8b_b256.log 2>&1; tail -2 $O/v8b_b256.log
  python benchmarks/bench_summary.py $O/engine_v8_triton_b256_t256.json ;;
v9)
  python -m adafuse_lab bench --models $M --method adafuse,single $D --limit 64 --batch-size 64 \
      --out $O/engine_v9_auto_b64_t256.json > $O/v9a.log 2>&1; tail -3 $O/v9a.log
  python benchmarks/bench_summary.py $O/engine_v9_auto_b64_t256.json
  python -m adafuse_lab bench --models $M --method adafuse $D --limit 64 --batch-size 64 --no-generate \
      --set early_scoring=false --out $O/engine_v9_auto_b64_t256_early_off.json > $O/v9b.log 2>&1; tail -2 $O/v9b.log
  python benchmarks/bench_summary.py $O/engine_v9_auto_b64_t256_early_off.json
  timeout 150 python .gpu-extra/floor_bench.py qwen2.5-coder-0.5b --out $O/floor_qwen05_b64.json > $O/floor.log 2>&1; tail -4 $O/floor.log
  bash $0 cost9 ;;
v9c)
  python -m adafuse_lab bench --models $M --method adafuse $D --limit 256 --batch-size 256 --no-generate \
      --out $O/engine_v9_auto_b256_t256.json > $O/v9c.log 2>&1; tail -2 $O/v9c.log
  python benchmarks/bench_summary.py $O/engine_v9_auto_b256_t256.json
  python -m adafuse_lab bench --models $M --method unite,gac,sweetspan,coolfusion,rerank $D --limit 64 --batch-size 64 \
      --no-generate --out $O/engine_v9_auto_others_b64_t256.json > $O/v9_others.log 2>&1; tail -2 $O/v9_others.log
  python benchmarks/bench_summary.py $O/engine_v9_auto_others_b64_t256.json ;;
v9e)
  for b in 64 256; do for e in true false; do
    python -m adafuse_lab bench --models $M --method adafuse $D --limit $b --batch-size $b --no-generate \
        --set early_scoring=$e --out $O/engine_v9e_auto_b${b}_early_$e.json > $O/v9e_b${b}_$e.log 2>&1
    python benchmarks/bench_summary.py $O/engine_v9e_auto_b${b}_early_$e.json | tail -1
  done; done ;;
cost9)
  python benchmarks/diag/forward_cost.py $M --data-dir .gpu-extra/data --attention auto --profile 16 \
      --out $O/forward_cost_auto_b64.json 2>&1 | grep -v "Loading weights" | tail -60 ;;
v10a)
  python .gpu-extra/floor_bench.py qwen2.5-coder-0.5b --out $O/floor_qwen05_b64.json > $O/floor.log 2>&1; tail -3 $O/floor.log
  python .gpu-extra/attn_bench.py --out $O/attn_b64.json > $O/attn.log 2>&1; tail -8 $O/attn.log
  python -m adafuse_lab bench --models $M --method adafuse,single $D --limit 64 --batch-size 64 \
      --out $O/engine_v10_b64_t256.json > $O/v10a.log 2>&1; tail -2 $O/v10a.log
  python benchmarks/bench_summary.py $O/engine_v10_b64_t256.json
  python -m adafuse_lab bench --models $M --method adafuse $D --limit 64 --batch-size 64 --no-generate \
      --set early_scoring=false --out $O/engine_v10_b64_early_false.json > $O/v10a_off.log 2>&1
  python benchmarks/bench_summary.py $O/engine_v10_b64_early_false.json ;;
v10b)
  for e in true false; do
    python -m adafuse_lab bench --models $M --method adafuse $D --limit 256 --batch-size 256 --no-generate \
        --set early_scoring=$e --out $O/engine_v10_b256_early_$e.json > $O/v10b_$e.log 2>&1
    python benchmarks/bench_summary.py $O/engine_v10_b256_early_$e.json
  done ;;
v10c) others_and_b1 10 ;;
paper10)
  P=random:llama-3.1-8b+qwen2.5-coder-0.5b,random:mistral-7b-v0.3+smollm2-135m
  for th in 0.0 1.0; do
    python -m adafuse_lab bench --models $P --method adafuse $D --limit 32 --batch-size 32 --set theta=$th \
        --out $O/engine_v10_paper_theta${th}_b32_t256.json > $O/paper10_$th.log 2>&1
    python benchmarks/bench_summary.py $O/engine_v10_paper_theta${th}_b32_t256.json
  done ;;
v11a)
  python .gpu-extra/floor_bench.py qwen2.5-coder-0.5b --out $O/floor_qwen05_b64.json > $O/floor.log 2>&1; tail -3 $O/floor.log
  python .gpu-extra/attn_bench.py --out $O/attn_b64.json > $O/attn.log 2>&1; tail -8 $O/attn.log
  python -m adafuse_lab bench --models $M --method adafuse,single $D --limit 64 --batch-size 64 \
      --out $O/engine_v11_b64_t256.json > $O/v11a.log 2>&1; tail -2 $O/v11a.log
  python benchmarks/bench_summary.py $O/engine_v11_b64_t256.json
  for a in auto triton; do
    python -m adafuse_lab bench --models $M --method adafuse $D --limit 256 --batch-size 256 --no-generate \
        --attention $a --out $O/engine_v11_b256_$a.json > $O/v11a_b256_$a.log 2>&1
    python benchmarks/bench_summary.py $O/engine_v11_b256_$a.json
  done ;;
v11old)
  # run from the old tree's folder: python puts the working directory first on sys.path
  ROOT=$(pwd); OLD=$ROOT/.gpu-extra/old; D="${D/.gpu-extra/$ROOT/.gpu-extra}"
  old_py() { (cd $OLD && PYTHONPATH=/tmp/site:$OLD python "$@"); }
  old_py -c "import adafuse_lab; print('package from', adafuse_lab.__file__)"
  old_py -m adafuse_lab bench --models $M --method adafuse,unite $D --limit 64 --batch-size 64 --no-generate \
      --out $O/engine_f47963b_b64_t256.json > $O/v11old_b64.log 2>&1; tail -2 $O/v11old_b64.log
  python benchmarks/bench_summary.py $O/engine_f47963b_b64_t256.json
  old_py -m adafuse_lab bench --models $M --method adafuse $D --limit 256 --batch-size 256 --no-generate \
      --out $O/engine_f47963b_b256_auto.json > $O/v11old_b256.log 2>&1
  python benchmarks/bench_summary.py $O/engine_f47963b_b256_auto.json ;;
v11c) others_and_b1 11 ;;
v12k)  # no models needed: run first, before the chunks are staged
  python -m pytest -q -p no:cacheprovider tests/test_attention.py -k "triton or fast_backend" 2>&1 | tail -2
  for shape in "64 14 2 qwen05" "64 9 3 smollm2" "256 14 2 qwen05"; do
    set -- $shape
    python benchmarks/diag/attn_tree.py --rows $1 --heads $2 --kv-heads $3 --out $O/attn_tree_$4_b$1.json 2>&1 | tail -3
  done ;;
v12)
  pack() { tar -czf ${OUT:-/tmp}/v12.tgz -C $O . ; }
  ROOT=$(pwd); OLD=$ROOT/.gpu-extra/old; DO="${D/.gpu-extra/$ROOT/.gpu-extra}"
  old_py() { (cd $OLD && PYTHONPATH=/tmp/site:$OLD python "$@"); }
  O=/tmp/v12; mkdir -p $O
  python -m adafuse_lab bench --models $M --method adafuse,single $D --limit 64 --batch-size 64 \
      --out $O/engine_v12_b64_t256.json > $O/v12_b64.log 2>&1
  python benchmarks/bench_summary.py $O/engine_v12_b64_t256.json; pack
  old_py -m adafuse_lab bench --models $M --method adafuse,single $DO --limit 64 --batch-size 64 --no-generate \
      --out $O/engine_152d14e_b64.json > $O/old_b64.log 2>&1
  python benchmarks/bench_summary.py $O/engine_152d14e_b64.json; pack
  python -m adafuse_lab bench --models $M --method adafuse,single $D --limit 64 --batch-size 64 --no-generate \
      --out $O/engine_v12_b64_warm.json > $O/v12_b64_warm.log 2>&1
  python benchmarks/bench_summary.py $O/engine_v12_b64_warm.json; pack
  python -m adafuse_lab bench --models $M --method adafuse $D --limit 256 --batch-size 256 --no-generate \
      --out $O/engine_v12_b256.json > $O/v12_b256.log 2>&1
  python benchmarks/bench_summary.py $O/engine_v12_b256.json; pack
  python .gpu-extra/floor_bench.py qwen2.5-coder-0.5b --out $O/floor_qwen05_b64.json > $O/floor.log 2>&1; tail -3 $O/floor.log; pack
  python .gpu-extra/attn_bench.py --out $O/attn_b64.json > $O/attn.log 2>&1; tail -8 $O/attn.log; pack ;;
v13)
  ROOT=$(pwd); OLD=$ROOT/.gpu-extra/old; DO="${D/.gpu-extra/$ROOT/.gpu-extra}"
  old_py() { (cd $OLD && PYTHONPATH=/tmp/site:$OLD python "$@"); }
  python -m adafuse_lab bench --models $M --method adafuse $D --limit 64 --batch-size 64 --no-generate \
      --out $O/warmup.json > /dev/null 2>&1
  for dt in bfloat16 float32; do
    python -m adafuse_lab bench --models $M --method adafuse $D --limit 64 --batch-size 64 --no-generate --dtype $dt \
        --out $O/engine_v14_b64_$dt.json > $O/v14_$dt.log 2>&1
    python benchmarks/bench_summary.py $O/engine_v14_b64_$dt.json
    old_py -m adafuse_lab bench --models $M --method adafuse $DO --limit 64 --batch-size 64 --no-generate --dtype $dt \
        --out $O/engine_e42ed9b_b64_$dt.json > $O/old_$dt.log 2>&1
    python benchmarks/bench_summary.py $O/engine_e42ed9b_b64_$dt.json
  done ;;
cuda15)  # no models needed: the engine's CUDA-only tests (tiny members on the GPU), first in a lease
  python -m pytest -q -p no:cacheprovider tests/test_decoding.py -k "graphs_survive" > $O/cuda15.log 2>&1; tail -15 $O/cuda15.log ;;
v16h|v16b)  # this commit (SmallGraphs and the host cuts since) against d7a104d (package in .gpu-extra/base, made by
  # `git archive d7a104d adafuse_lab | tar -x -C .gpu-extra/base`), on one host
  STEP=$1; O=/tmp/$STEP; mkdir -p $O
  pack() { tar -czf ${OUT:-/tmp}/$STEP.tgz -C $O . ; }
  both() { local name=$1; shift
    base_py -m adafuse_lab bench --models $M ${D/.gpu-extra/$ROOT/.gpu-extra} "$@" --out $O/${name}_base.json > $O/${name}_base.log 2>&1
    python benchmarks/bench_summary.py $O/${name}_base.json
    python -m adafuse_lab bench --models $M $D "$@" --out $O/${name}_head.json > $O/${name}_head.log 2>&1
    python benchmarks/bench_summary.py $O/${name}_head.json; pack; }
  python -m pytest -q -p no:cacheprovider tests/test_decoding.py -k "graphs_survive or small_graphs" > $O/cuda16.log 2>&1
  tail -4 $O/cuda16.log; pack
  case $STEP in
  v16h)  # no staging: tiny members on CUDA (the GPU's work small: the host's time)
    M=tiny:bpe,tiny:spm; D="--task triviaqa --source local --data-dir .gpu-extra/data --max-new-tokens 64 --device cuda"
    both tiny --method adafuse --limit 64 --batch-size 64 --no-generate ;;
  v16b)  # after staging: real members, the first run warms the Triton cache
    python -m adafuse_lab bench --models $M $D --method adafuse --limit 64 --batch-size 64 --max-new-tokens 32 --no-generate \
        --out $O/warmup.json > $O/warmup.log 2>&1
    both b64 --method adafuse --limit 64 --batch-size 64 --no-generate
    both b256 --method adafuse --limit 256 --batch-size 256 --no-generate
    both b64_turns --method adafuse --limit 64 --batch-size 64 --no-generate --set member_turns=true ;;
  esac ;;
v19t)  # no staging needed (tiny members): a lease's first call, before the 20 chunks
  cuda_tests 150 2>&1 | tail -3 ;;
v20t)  # no staging (a lease's first call): the CUDA tests (reuse included); tiny members (host-bound) on
  # 256 TriviaQA questions at b64, reuse_buffers on then off
  STEP=$1; O=/tmp/$STEP; mkdir -p $O
  pack() { tar -czf ${OUT:-/tmp}/$STEP.tgz -C $O . ; }
  cuda_tests 110 > $O/cuda20.log 2>&1; tail -3 $O/cuda20.log; pack
  T="--models tiny:bpe,tiny:spm --task triviaqa --source local --data-dir .gpu-extra/data --max-new-tokens 64 --device cuda"
  for r in true false; do
    python -m adafuse_lab bench $T --method adafuse --limit 256 --batch-size 64 --no-generate --set reuse_buffers=$r \
        --out $O/tiny_reuse_$r.json > $O/tiny_reuse_$r.log 2>&1
    python benchmarks/bench_summary.py $O/tiny_reuse_$r.json; pack
  done ;;
v20|v20b)  # staged: buffers and graphs reused across batches (reuse_buffers), on against off; targets 2 and 3
  STEP=$1; O=/tmp/$STEP; mkdir -p $O
  pack() { tar -czf ${OUT:-/tmp}/$STEP.tgz -C $O . ; }
  bq() { local name=$1; shift
    python -m adafuse_lab bench --models $M $D --method adafuse "$@" --out $O/$name.json > $O/$name.log 2>&1
    python benchmarks/bench_summary.py $O/$name.json; pack; }
  if [ $STEP = v20 ]; then
    # the tests ran already where step v20t ran on this machine
    [ -e /tmp/v20t/cuda20.log ] || { cuda_tests 110 > $O/cuda20.log 2>&1; tail -3 $O/cuda20.log; pack; }
    bq warm --limit 64 --batch-size 64 --max-new-tokens 16 --no-generate  # Triton's disk cache
    # this commit, the session's start (89d0f70: .gpu-extra/base), this commit with reuse off
    bq f2_reuse --limit 256 --batch-size 64 --no-generate
    base_py -m adafuse_lab bench --models $M ${D/.gpu-extra/$ROOT/.gpu-extra} --method adafuse --limit 256 \
        --batch-size 64 --no-generate --out $O/f2_base.json > $O/f2_base.log 2>&1
    python benchmarks/bench_summary.py $O/f2_base.json; pack
    bq f2_fresh --limit 256 --batch-size 64 --no-generate --set reuse_buffers=false
    bq q64_b64 --limit 64 --batch-size 64  # target 2, with the members' generate on the same host
    exit 0
  fi
  bq q64_b32 --limit 64 --batch-size 32 --no-generate  # target 2's questions as two batches of 32 in flight
  python .gpu-extra/floor_bench.py qwen2.5-coder-0.5b --out $O/floor_qwen05_b64.json > $O/floor.log 2>&1; tail -3 $O/floor.log; pack
  python .gpu-extra/attn_bench.py --out $O/attn_b64.json > $O/attn.log 2>&1; tail -8 $O/attn.log; pack
  bq b256 --limit 256 --batch-size 256 --no-generate  # target 3
  python benchmarks/diag/target_bounds.py /tmp/v20/q64_b64.json $O/b256.json ;;
v20r)  # staged: the run path, every batch in one call (this commit) against batches in groups (the base)
  STEP=$1; O=/tmp/$STEP; mkdir -p $O
  pack() { tar -czf ${OUT:-/tmp}/$STEP.tgz -C $O . ; }
  R="--task gsm8k --source local --data-dir $ROOT/.gpu-extra/data --max-new-tokens 256 --models $M --method adafuse"
  R="$R --no-progress --limit 256 --batch-size 64"
  python -m adafuse_lab run $R --out $O/run_head > $O/run_head.log 2>&1; pack
  base_py -m adafuse_lab run $R --out $O/run_base > $O/run_base.log 2>&1; pack
  for d in run_head run_base; do python - $O/$d <<'PY'
import hashlib, json, sys
d = sys.argv[1]
t = json.load(open(f"{d}/results.json"))["timings"]
print(d, {k: t.get(k) for k in ("decode_s", "wall_s", "load_s")},
      "samples_sha256", hashlib.sha256(open(f"{d}/samples.jsonl", "rb").read()).hexdigest()[:12])
PY
  done | tee $O/times.txt; pack ;;
v17p|v19r)
  STEP=$1; O=/tmp/$STEP; mkdir -p $O
  pack() { tar -czf ${OUT:-/tmp}/$STEP.tgz -C $O . ; }
  python -c "from adafuse_lab.models import load_session as L; L('qwen2.5-coder-0.5b'); L('smollm2-135m')" > $O/load.log 2>&1
  R="--task gsm8k --source local --data-dir .gpu-extra/data --max-new-tokens 256 --models $M --method adafuse --no-progress"
  r() { local name=$1 n=$2; shift 2; local t0=$(date +%s%N)
    if [ $n = 1 ]; then python -m adafuse_lab run $R "$@" --out $O/$name > $O/$name.log 2>&1
    else python -m torch.distributed.run --nproc-per-node $n --master-port 29533 -m adafuse_lab run $R "$@" \
        --out $O/$name > $O/$name.log 2>&1; fi
    echo "$name processes=$n rc=$? command_wall_ms=$(( ($(date +%s%N) - t0) / 1000000 ))" | tee -a $O/times.txt
    python - $O/$name <<'PY' | tee -a $O/times.txt
import hashlib, json, sys
d = sys.argv[1]
r = json.load(open(f"{d}/results.json"))
t = r["timings"]
shards = t.get("shards", [t])
print(f"  n={r['n_examples']} decode_span_s={t.get('decode_span_s', t.get('decode_s'))} wall_s={t['wall_s']} "
      f"shard_decode_s={[s['decode_s'] for s in shards]} load_s={[s['load_s'] for s in shards]} "
      f"samples_sha256={hashlib.sha256(open(f'{d}/samples.jsonl', 'rb').read()).hexdigest()[:12]} "
      # the predictions alone: a trace's last float bits follow the CPU threads torchrun allows
      f"predictions_sha256={hashlib.sha256(''.join(json.loads(x)['prediction'] + chr(10) for x in open(f'{d}/samples.jsonl')).encode()).hexdigest()[:12]}")
PY
    pack; }
  if [ $STEP = v19r ]; then  # most wanted first: the device may be taken back before the end
    cuda_tests 120 > $O/cuda19.log 2>&1; tail -3 $O/cuda19.log; pack
    python -m adafuse_lab bench --models $M $D --method adafuse --limit 64 --batch-size 64 --no-generate \
        --cprofile --profile-only --out $O/cprofile_b64.json > $O/cprofile_b64.log 2>&1
    sed -n "/internal time/,+34p" $O/cprofile_b64.log | cut -c1-150; pack
    r f2x64 1 --limit 256 --batch-size 64
    r f1x64 1 --limit 256 --batch-size 64 --set batches_in_flight=1
    bq() { local name=$1; shift
      python -m adafuse_lab bench --models $M $D --method adafuse "$@" --out $O/$name.json > $O/$name.log 2>&1
      python benchmarks/bench_summary.py $O/$name.json; pack; }
    # target 2's 64 questions, with the members' generate: its yardstick on the same host
    bq q64_b64 --limit 64 --batch-size 64
    python .gpu-extra/floor_bench.py qwen2.5-coder-0.5b --out $O/floor_qwen05_b64.json > $O/floor.log 2>&1; tail -3 $O/floor.log; pack
    python .gpu-extra/attn_bench.py --out $O/attn_b64.json > $O/attn.log 2>&1; tail -8 $O/attn.log; pack
    # target 3: one batch of 256 leaves the host and the GPU in turn (engine v18: host 20 s + wait 11 s);
    # member turns overlap the two members inside the batch
    bq b256_turns --limit 256 --batch-size 256 --no-generate --set member_turns=true
    python benchmarks/diag/target_bounds.py $O/q64_b64.json $O/b256_turns.json  # per question against the floor
    bq q64_b32 --limit 64 --batch-size 32 --no-generate  # two batches of 32 in flight
    r f2x128 1 --limit 256 --batch-size 128
    r p2f2x64 2 --limit 256 --batch-size 64; exit 0  # two processes, 2 in flight each (engine v17: no gain at 1)
  fi
  r p4x64 4 --limit 256 --batch-size 64
  r p1x64 1 --limit 256 --batch-size 64
  r p2x128 2 --limit 256 --batch-size 128
  r p1x256 1 --limit 256 --batch-size 256
  r p2x32 2 --limit 64 --batch-size 32
  r q1x64 1 --limit 64 --batch-size 64
  # target 2's yardstick on the same host: the members' own generate on the same 64 questions
  python -m adafuse_lab bench --models $M --method single $D --limit 64 --batch-size 64 \
      --out $O/generate_b64.json > $O/generate_b64.log 2>&1
  python benchmarks/bench_summary.py $O/generate_b64.json; pack ;;
v18f|v18g|v18s|v18p)
  STEP=$1; O=/tmp/$STEP; mkdir -p $O
  pack() { tar -czf ${OUT:-/tmp}/$STEP.tgz -C $O . ; }
  fb() { local name=$1 bs=$2 n=$3
    base_py -m adafuse_lab bench --models $M ${D/.gpu-extra/$ROOT/.gpu-extra} --method adafuse --limit 256 \
        --batch-size $bs --no-generate --set batches_in_flight=$n --out $O/${name}_base.json > $O/${name}_base.log 2>&1
    python benchmarks/bench_summary.py $O/${name}_base.json; pack; }
  [ $STEP = v18g ] || cuda_tests 120 > $O/cuda18.log 2>&1; tail -3 $O/cuda18.log; pack
  f() { local name=$1 bs=$2 n=$3
    python -m adafuse_lab bench --models $M $D --method adafuse --limit ${L:-256} --batch-size $bs --no-generate \
        --set batches_in_flight=$n --out $O/$name.json > $O/$name.log 2>&1
    python benchmarks/bench_summary.py $O/$name.json; pack; }
  if [ $STEP = v18p ]; then
    P=random:llama-3.1-8b+qwen2.5-coder-0.5b,random:mistral-7b-v0.3+smollm2-135m
    for n in 1 2; do
      python -m adafuse_lab bench --models $P $D --method adafuse --limit 64 --batch-size 32 --max-new-tokens 64 \
          --set theta=1.0 --set batches_in_flight=$n --no-generate --out $O/paper_theta1_b32_f$n.json > $O/paper_f$n.log 2>&1
      python benchmarks/bench_summary.py $O/paper_theta1_b32_f$n.json; pack
    done
  elif [ $STEP != v18g ]; then  # the first run on the host pays for Triton's compiles and the first loads
    python -m adafuse_lab bench --models $M $D --method adafuse --limit 64 --batch-size 64 --max-new-tokens 16 --no-generate \
        --out $O/warmup.json > $O/warmup.log 2>&1
  fi
  if [ $STEP = v18p ]; then :
  elif [ $STEP = v18s ]; then
    L=128; f b64_f1 64 1; f b64_f2 64 2; L=256; f b128_f2 128 2; f b128_f1 128 1
  elif [ $STEP = v18f ]; then fb b64_f1 64 1; f b64_f1 64 1; fb b64_f2 64 2; f b64_f2 64 2
  else f b128_f2 128 2; f b256_f1 256 1; f b64_f4 64 4; fi ;;
v14|v14m|v14p|v14o|v15a|v15b|v15t)
  STEP=$1; O=/tmp/$STEP; mkdir -p $O
  pack() { tar -czf ${OUT:-/tmp}/$STEP.tgz -C $O . ; }
  b() { local name=$1; shift; python -m adafuse_lab bench --models $M $D "$@" --out $O/$name.json > $O/$name.log 2>&1
        python benchmarks/bench_summary.py $O/$name.json; pack; }
  case $STEP in
  v14)
    b engine_v14_b64_t256 --method adafuse,single --limit 64 --batch-size 64
    b engine_v14_b64_warm --method adafuse,single --limit 64 --batch-size 64 --no-generate --cprofile
    b engine_v14_b256 --method adafuse --limit 256 --batch-size 256 --no-generate
    python .gpu-extra/floor_bench.py qwen2.5-coder-0.5b --out $O/floor_qwen05_b64.json > $O/floor.log 2>&1; tail -3 $O/floor.log; pack
    python .gpu-extra/attn_bench.py --out $O/attn_b64.json > $O/attn.log 2>&1; tail -8 $O/attn.log; pack ;;
  v14m)
    b engine_v14_others_b64 --method unite,gac,sweetspan,coolfusion,rerank --limit 64 --batch-size 64 --no-generate
    b engine_v14_methods_b1 --method $ALL --limit 2 --batch-size 1 ;;
  v14p)
    P=random:llama-3.1-8b+qwen2.5-coder-0.5b,random:mistral-7b-v0.3+smollm2-135m
    for th in ${2:-0.0 1.0}; do  # generate does not depend on theta: timed with theta 0 only
      G=$([ "$th" = 0.0 ] || echo --no-generate)
      python -m adafuse_lab bench --models $P --method adafuse $D --limit 32 --batch-size 32 --set theta=$th $G \
          --out $O/engine_v14_paper_theta${th}_b32.json > $O/paper_$th.log 2>&1
      python benchmarks/bench_summary.py $O/engine_v14_paper_theta${th}_b32.json; pack
    done ;;
  v15t)
    OUT=$O bash $0 cuda15; pack
    M=tiny:bpe,tiny:spm; D="--task triviaqa --source local --data-dir .gpu-extra/data --max-new-tokens 64 --device cuda"
    b tiny_turns --method adafuse --limit 64 --batch-size 64 --no-generate --set member_turns=true
    b tiny_turns2 --method adafuse --limit 64 --batch-size 64 --no-generate --set member_turns=true
    b tiny_no_turns --method adafuse --limit 64 --batch-size 64 --no-generate
    python - $O/tiny_*.json <<'PY'
import json, sys
for f in sys.argv[1:]:
    x = json.load(open(f))["methods"]["adafuse"]
    print(f.split("/")[-1], "forwards", x["forward_calls"], "sync_reads", x["sync_reads"], "answers", x["answers_sha256"][:10])
PY
    ;;
  v15b)  # cuda15 ran in v15t, earlier in the same lease
    T="--set member_turns=true"  # off by default since v15a
    b engine_v15b_b64 --method adafuse --limit 64 --batch-size 64 --no-generate $T
    b engine_v15b_b64_no_turns --method adafuse --limit 64 --batch-size 64 --no-generate --cprofile
    b engine_v15b_b64_warm --method adafuse --limit 64 --batch-size 64 --no-generate $T
    b engine_v15b_b256_no_turns --method adafuse --limit 256 --batch-size 256 --no-generate
    b engine_v15b_b256 --method adafuse --limit 256 --batch-size 256 --no-generate $T ;;
  v15a)
    OUT=$O bash $0 cuda15; pack
    b engine_v15_b64 --method adafuse,single --limit 64 --batch-size 64
    b engine_v15_b64_warm --method adafuse --limit 64 --batch-size 64 --no-generate
    b engine_v15_b64_no_turns --method adafuse --limit 64 --batch-size 64 --no-generate --set member_turns=false
    b engine_v15_b256 --method adafuse --limit 256 --batch-size 256 --no-generate ;;
  v14o)
    OUT=$O bash $0 v13 > $O/v13.log 2>&1; tail -20 $O/v13.log; pack ;;
  esac ;;
11)
  R="--source local --data-dir .gpu-extra/data --dtype float32 --batch-size 64 --no-progress"
  for job in "gsm8k adafuse qwen2.5-coder-0.5b,smollm2-135m all" "gsm8k single qwen2.5-coder-0.5b all" \
             "triviaqa adafuse qwen2.5-coder-0.5b,smollm2-135m 500" "triviaqa single qwen2.5-coder-0.5b 500"; do
    set -- $job
    lim=$([ "$4" = all ] && echo "" || echo "--limit $4")
    start=$(date +%s%N)
    python -m adafuse_lab run --task $1 --method $2 --models $3 $lim $R --out $O/q11_$1_$2 > $O/q11_$1_$2.log 2>&1
    rc=$?
    echo "$1 $2 $3 limit=$4 rc=$rc wall_ms=$(( ($(date +%s%N) - start) / 1000000 ))" | tee -a $O/q11_times.txt
  done ;;
b1v9)
  python -m adafuse_lab bench --models $M --method $ALL $D --limit 2 --batch-size 1 \
      --out $O/engine_v9_methods_b1_t256.json 2>&1 | grep -v "Loading weights" | tail -40 ;;
host8)  # host6 on triton after the host cuts (bench's --cprofile profiles one batch of at most 64 tokens)
  python -m adafuse_lab bench --models $M --method adafuse $D --limit 64 --batch-size 64 --no-generate --attention triton \
      --cprofile --profile-only --out $O/engine_v8_host_b64.json > $O/host8.log 2>&1; grep -v "Converting\|Loading\|Writing" $O/host8.log | head -75 ;;
host6)
  python -m adafuse_lab bench --models $M --method adafuse $D --limit 64 --batch-size 64 --no-generate \
      --cprofile --profile-only --out $O/engine_v6_host_b64.json > $O/host6.log 2>&1; head -80 $O/host6.log ;;
esac
ls -la $O
