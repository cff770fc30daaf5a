#!/usr/bin/env bash
# On the GPU machine: reassemble staged GGUF chunks (../shared/tools/gpu-stage split) into a
# zoo-style cache, install the gguf wheel, and export ADAFUSE_CACHE. Source it:
#   source benchmarks/gpu_setup.sh
set -e
S=/root/stage
for f in qwen05 smollm2; do
  if ls $S/$f.gguf.part* >/dev/null 2>&1; then cat $S/$f.gguf.part* > $S/$f.gguf && rm $S/$f.gguf.part*; fi
done
mkdir -p $S/cache/models/qwen2.5-coder-0.5b $S/cache/models/smollm2-135m
[ -f $S/qwen05.gguf ] && mv $S/qwen05.gguf $S/cache/models/qwen2.5-coder-0.5b/model.gguf
[ -f $S/smollm2.gguf ] && mv $S/smollm2.gguf $S/cache/models/smollm2-135m/model.gguf
for m in qwen2.5-coder-0.5b smollm2-135m; do
  [ -d $S/cache/models/$m/tokenizer ] || cp -r .gpu-extra/cache/models/$m/tokenizer $S/cache/models/$m/
done
[ -f /tmp/site/.installed ] || { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu-extra/whl/*.whl && touch /tmp/site/.installed; }
# The repository root too: the package is not installed there, and papermill's kernels start in notebooks/.
export PYTHONPATH=/tmp/site:$(pwd):$PYTHONPATH ADAFUSE_CACHE=$S/cache PYTHONUNBUFFERED=1
set +e
