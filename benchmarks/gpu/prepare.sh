#!/usr/bin/env bash
# Run HERE (on the CPU box, which can reach the package registry) before a GPU session: fills .gpu/ (git
# ignores it) with what a lent GPU machine lacks and cannot fetch, so the device tool can carry it:
#   - wheels of pydantic and its helpers for the GPU image's Python 3.12 (the image has torch, tokenizers,
#     safetensors, numpy, pyyaml and tqdm, but not pydantic), at the versions installed here, and torchao's (FP8
#     training, pure Python on its float8 path) when it is installed here;
#   - the WikiText-2 JSONL files and GPT-2 tokenizer that `stage_throughput.py --data local` reads, and the
#     Python code corpus (NetworkX, 7 MB) that `compare_124M.py --corpus code` trains on.
# Then: run(command="bash benchmarks/gpu/run.sh 124M", carry=[".gpu"]) and likewise 270M.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
shared=${GRADUS_SHARED_DATA:-$repo/../shared/data}
dest=$repo/.gpu
rm -rf "$dest"
mkdir -p "$dest/wheels" "$dest/data/wikitext-2" "$dest/data/gpt2-tokenizer" "$dest/data/python-code-networkx"
pins=$(python - <<'PY'
from importlib.metadata import version
from importlib.metadata import PackageNotFoundError
pins = []
for p in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "torchao"):
    try:
        pins.append(f"{p}=={version(p)}")
    except PackageNotFoundError:
        pass  # torchao is optional: the fp8 measurements then refuse in one line on the GPU
print(" ".join(pins))
PY
)
# shellcheck disable=SC2086
pip download -q --dest "$dest/wheels" --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 $pins
cp "$shared"/wikitext-2/*.jsonl "$dest/data/wikitext-2/"
cp "$shared"/python-code-networkx/networkx_py.jsonl "$dest/data/python-code-networkx/"
cp "$shared"/gpt2-tokenizer/vocab.json "$shared"/gpt2-tokenizer/merges.txt "$dest/data/gpt2-tokenizer/"
du -sh "$dest"
echo "ready: carry .gpu in the device tool's run"
