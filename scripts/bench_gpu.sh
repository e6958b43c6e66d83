#!/usr/bin/env bash
# The GPU benchmark suite in one go (~8 min on one H100, most of it torch.compile): the CUDA-only tests, training
# speed of every model family (ganlab through Lightning vs the plain loop: scripts/bench_train.py), then the data
# pipelines and occlusion vs Captum (scripts/bench_data.py). Each part has its own time limit, so one slow or
# failing part cannot take the others down.
#   bash scripts/bench_gpu.sh [out_dir]        # default benchmarks/gpu; report: <out_dir>/train_speed.md
#   PARTS="cyclegan reference" bash scripts/bench_gpu.sh    # some parts only (tests fast cyclegan pix2pix
#                                                           # reference data)
set -u
OUT_DIR=${1:-benchmarks/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__)"

part() {  # part <seconds> <command...>
    local limit=$1; shift
    local start=$SECONDS
    echo "== $* (limit ${limit}s)"
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    echo "== exit $? after $((SECONDS - start)) s"
}
ROWS="$OUT_DIR/train_rows.jsonl"
PARTS=${PARTS:-tests fast cyclegan pix2pix data}
for p in $PARTS; do case $p in
  tests) part 45 "$PY" -m pytest -q -p no:cacheprovider tests/test_perf.py -k cuda ;;
  fast) part 90 "$PY" scripts/bench_train.py --device cuda --families mlp_gan dcgan --variants default eager-fp32 \
            --json "$ROWS" ;;
  cyclegan) part 210 "$PY" scripts/bench_train.py --device cuda --families cyclegan --variants eager-bf16 default \
            --json "$ROWS" ;;
  pix2pix) part 120 "$PY" scripts/bench_train.py --device cuda --families pix2pix --variants eager-bf16 default \
            --json "$ROWS" ;;
  reference) part 90 "$PY" scripts/bench_train.py --device cuda --families cyclegan pix2pix mlp_gan \
            --variants eager-fp32-b1 --json "$ROWS" ;;
  data) part 60 "$PY" scripts/bench_data.py --device cuda --quick --out "$OUT_DIR/data_pipeline.md" ;;
esac; done
"$PY" scripts/bench_train.py --render "$ROWS" --out "$OUT_DIR/train_speed.md" > /dev/null
cat "$OUT_DIR/train_speed.md"
