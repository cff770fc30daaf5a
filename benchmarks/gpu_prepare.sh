#!/usr/bin/env bash
# On the development machine, before a lease: build what a lent GPU machine needs (docs/GPU.md, section 2).
#   bash benchmarks/gpu_prepare.sh [BASE_COMMIT]
# - .gpu-extra/ (git-ignored, about 17 MB): the two demo members' tokenizers and generation configs,
#   the gguf wheel, the GSM8K and TriviaQA dev data, floor_bench.py and attn_bench.py, and with
#   BASE_COMMIT that commit's package in .gpu-extra/base (lease steps that time a change against it);
# - .gpu-stage/ (git-ignored): both GGUFs in chunks that fit one transfer with the working tree.
# It fetches and converts the members once (about 2 minutes on a fresh machine) and needs ../shared.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
[ -d "$SHARED/data" ] && [ -x "$SHARED/tools/gpu-stage" ] || { echo "gpu_prepare.sh: needs $SHARED (data, tools)" >&2; exit 1; }
C=${ADAFUSE_CACHE:-$HOME/.cache/adafuse_lab}
MEMBERS="qwen2.5-coder-0.5b smollm2-135m"

for m in $MEMBERS; do
  [ -f "$C/models/$m/hf/generation_config.json" ] || python -m adafuse_lab models fetch "$m"
done
python -c "from adafuse_lab.models import load_session as L; [L(m) for m in '$MEMBERS'.split()]" > /dev/null 2>&1

mkdir -p .gpu-extra/whl .gpu-extra/data
for m in $MEMBERS; do
  mkdir -p .gpu-extra/cache/models/$m
  rm -rf .gpu-extra/cache/models/$m/tokenizer
  cp -r "$C/models/$m/tokenizer" "$C/models/$m/hf/generation_config.json" .gpu-extra/cache/models/$m/
done
ls .whl/gguf-0.19.0-*.whl > /dev/null 2>&1 || "$SHARED/tools/gpu-stage" wheels gguf==0.19.0 > /dev/null
cp .whl/gguf-0.19.0-*.whl .gpu-extra/whl/
cp -r "$SHARED/data/gsm8k" "$SHARED/data/triviaqa" .gpu-extra/data/
cp "$SHARED/tools/floor_bench.py" "$SHARED/tools/attn_bench.py" .gpu-extra/
if [ -n "${1:-}" ]; then
  rm -rf .gpu-extra/base && mkdir -p .gpu-extra/base && git archive "$1" adafuse_lab | tar -x -C .gpu-extra/base
fi

# a chunk travels with the working tree, 64 MiB together
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
chunk=$(( (64 * 1048576 - tree) / 1048576 - 1 ))
ln -sf "$C/models/qwen2.5-coder-0.5b/model.gguf" /tmp/qwen05.gguf
ln -sf "$C/models/smollm2-135m/model.gguf" /tmp/smollm2.gguf
rm -rf .gpu-stage
"$SHARED/tools/gpu-stage" split /tmp/qwen05.gguf /tmp/smollm2.gguf --chunk-mb "$chunk" > /dev/null
echo "gpu_prepare.sh: .gpu-extra $(du -sh .gpu-extra | cut -f1); $(ls .gpu-stage | wc -l) chunks of at most $chunk MiB in .gpu-stage:"
ls .gpu-stage
