#!/usr/bin/env bash
# The device checks the issues ask for, as one short script for a lent GPU machine (not CI):
#   1. tools/validate_pod_deps.py: real GPU name, VRAM and CUDA readings and the VRAM comparison;
#   2. tools/auto_caption.py: a tiny random-weight BLIP-2 captioning on CUDA in fp16;
#   3. evals/face_similarity_eval.py: the insightface backend on the test-built ONNX pack with
#      --device auto and --device cuda, reporting the providers the sessions really use.
# Optional wheels (insightface, transformers 4.57.1 and its hub/tokenizers) may be carried in
# .gpu-wheels/; they are installed into a scratch folder, never into the machine's Python.
set -u
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
WORK=$(mktemp -d)
echo "== machine"; nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv; python3 --version
if ls .gpu-wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-deps --target "$WORK/site" .gpu-wheels/*.whl && export PYTHONPATH="$WORK/site"
fi
python3 -c "import torch, onnxruntime, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers()); print('transformers', transformers.__version__)"

echo "== 1. validate_pod_deps.py"
python3 tools/validate_pod_deps.py --json "$OUT/validate.json" > "$OUT/validate.txt" 2>&1; echo "exit $?"
grep -iE "gpu|vram|cuda|nvidia|torch|onnxruntime|fits|verdict|GiB" "$OUT/validate.txt" | head -60

echo "== 2. auto_caption.py, tiny BLIP-2 on CUDA"
python3 - "$WORK" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
sys.path.insert(0, "tests")
from tiny_blip2 import build_tiny_blip2
work = Path(sys.argv[1])
build_tiny_blip2(work / "blip2")
(work / "images").mkdir()
rng = np.random.default_rng(0)
for index in range(3):
    Image.fromarray(rng.integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(work / "images" / f"img{index}.png")
PY
python3 tools/auto_caption.py --images "$WORK/images" --model "$WORK/blip2" --device cuda --trigger ohwx --no-progress; echo "exit $?"
head -c 200 "$WORK/images/img0.txt"; echo

echo "== 3. face_similarity_eval.py, insightface on the test pack"
python3 - "$WORK" <<'PY'
import sys
from pathlib import Path
import cv2
sys.path.insert(0, "tests")
from insightface_test_pack import build_pack, place_faces
work = Path(sys.argv[1])
build_pack(work / "pack")
for name, seed in (("gen", 1), ("ref", 1)):
    (work / name).mkdir()
    for index in range(3):
        cv2.imwrite(str(work / name / f"{name}{index}.png"), place_faces((256, 256), [(seed, (128, 128), 96)]))
PY
for device in auto cuda; do
  python3 evals/face_similarity_eval.py --generated "$WORK/gen" --reference "$WORK/ref" --model-pack "$WORK/pack" \
      --device $device --no-cache --json "$OUT/face_$device.json" > "$OUT/face_$device.txt" 2>&1; echo "device $device exit $?"
  tail -4 "$OUT/face_$device.txt"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('providers', r['providers'], 'device', r['device'])" "$OUT/face_$device.json" 2>/dev/null
done
rm -rf "$WORK"
