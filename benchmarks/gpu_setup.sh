#!/usr/bin/env bash
# On the GPU machine: reassemble staged GGUF chunks (../shared/tools/gpu-stage split) into a
# zoo-style cache, install the wheels in .gpu-extra/whl, and export ADAFUSE_CACHE. Source it:
#   source benchmarks/gpu_setup.sh
# Chunks are named after the zoo member (NAME.gguf.partNNN, e.g. gemma3-270m.gguf.part000);
# qwen05 and smollm2 are the older names of qwen2.5-coder-0.5b and smollm2-135m. Each
# member's tokenizer comes from .gpu-extra/cache/models/NAME/tokenizer.
set -e
S=${STAGE:-/root/stage}
zoo_name() { case $1 in qwen05) echo qwen2.5-coder-0.5b ;; smollm2) echo smollm2-135m ;; *) echo "$1" ;; esac; }
for first in $S/*.gguf.part000; do
  [ -e "$first" ] || continue
  f=$(basename "$first" .gguf.part000); m=$(zoo_name "$f")
  mkdir -p $S/cache/models/$m
  cat $S/$f.gguf.part* > $S/cache/models/$m/model.gguf && rm $S/$f.gguf.part*
done
# Every member in .gpu-extra gets its tokenizer, staged or not, and its generation config beside
# it: a random-weight member takes its tokenizer from there without the weights (models.load_tokens).
for d in .gpu-extra/cache/models/*/; do
  [ -d "$d" ] || continue
  m=$(basename "$d"); mkdir -p $S/cache/models/$m
  [ -d $S/cache/models/$m/tokenizer ] || cp -r $d/tokenizer $S/cache/models/$m/
  [ ! -f $d/generation_config.json ] || cp $d/generation_config.json $S/cache/models/$m/
done
[ -f /tmp/site/.installed ] || { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu-extra/whl/*.whl && touch /tmp/site/.installed; }
# The repository root too: the package is not installed there, and papermill's kernels start in notebooks/.
export PYTHONPATH=/tmp/site:$(pwd):$PYTHONPATH ADAFUSE_CACHE=$S/cache PYTHONUNBUFFERED=1
set +e
