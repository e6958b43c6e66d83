#!/usr/bin/env bash
# The GPU benchmark suite in one go (about 6-7 min on one H100, half of it torch.compile): the CUDA-only tests, training
# speed of every model family (ganlab through Lightning vs the plain loop: scripts/bench_train.py), then the data
# pipelines and occlusion vs Captum (scripts/bench_data.py). Each part has its own time limit, so one slow or
# failing part cannot take the others down.
#   bash scripts/bench_gpu.sh [out_dir]   # default benchmarks/gpu/<date_time>; report: <out_dir>/train_speed.md
#   PARTS="cyclegan profile" bash scripts/bench_gpu.sh      # some parts (tests nvml fast cyclegan cyclegan-eager
#                                                           # pix2pix reference data; extra: e2e, profile)
set -u
OUT_DIR=${1:-benchmarks/gpu/$(date +%Y-%m-%d_%H%M)}
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
PARTS=${PARTS:-tests nvml fast cyclegan pix2pix reference data}
B="$PY scripts/bench_train.py --device cuda --json $ROWS"
for p in $PARTS; do case $p in
  tests) part 40 "$PY" -m pytest -q -p no:cacheprovider tests/test_perf.py -k cuda ;;
  # MLP GAN, DCGAN, PCam classifier, ProGAN (final stage): the GPU defaults (bf16, compile, GAN step graph); eager fp32.
  fast) part 130 $B --families mlp_gan dcgan classifier progan --variants default
        part 30 $B --families mlp_gan --variants eager-fp32 ;;
  cyclegan) part 150 $B --families cyclegan --variants default ;;
  cyclegan-eager) part 60 $B --families cyclegan --variants eager-bf16 ;;
  pix2pix) part 110 $B --families pix2pix --variants default graph ;;
  # The references as they ship: fp32, batch 1, no compile.
  reference) part 40 $B --families cyclegan pix2pix --variants eager-fp32-b1 --warmup 3 --steps 10 ;;
  data) part 65 "$PY" scripts/bench_data.py --device cuda --quick --out "$OUT_DIR/data_pipeline.md" ;;
  # What Lightning's NVML-based CUDA check (set on import) costs each Adam step where NVML loads; ganlab drops it
  # only where NVML cannot load (ganlab/perf/cuda_check.py). Included in the default parts: 10 s.
  nvml) part 30 "$PY" - <<'PYEOF'
import os, time, torch, pytorch_lightning  # noqa: F401  (the import sets PYTORCH_NVML_BASED_CUDA_CHECK=1)
p = [torch.nn.Parameter(torch.randn(1000, device="cuda"))]
p[0].grad = torch.randn_like(p[0])
for fused in (False, True):
    opt = torch.optim.Adam(p, fused=fused)
    for check in ("1", None):
        if check:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = check
        else:
            os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
        for _ in range(50):
            opt.step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(2000):
            opt.step()
        torch.cuda.synchronize()
        print(f"Adam(fused={fused}) step, NVML check {'on' if check else 'off'}: "
              f"{(time.perf_counter() - t) / 2000 * 1e6:.1f} us")
PYEOF
        ;;
  # A whole default `ganlab train` on the GPU (MLP GAN on MNIST: loader, callbacks, logging; the bench rows above
  # see none of that): wall time per iteration between two runs of 200 and 2,200 optimizer steps (E2E_TRAINER=cpu
  # to try it without a GPU).
  e2e) part 150 "$PY" - <<'PYEOF'
import os, subprocess, sys, tempfile, time
runs = {}
for steps in (200, 2200):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ganlab", "train", f"trainer={os.environ.get('E2E_TRAINER', 'gpu')}",
                           "logger=none", f"trainer.max_steps={steps}", f"hydra.run.dir={tempfile.mkdtemp()}"],
                          capture_output=True, text=True)
    runs[steps] = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"ganlab train failed:\n{proc.stderr[-2000:]}")
iterations = (2200 - 200) // 2  # a GAN iteration is two optimizer steps
print(f"e2e MLP GAN on MNIST: {1000 * (runs[2200] - runs[200]) / iterations:.2f} ms per iteration "
      f"({iterations} iterations; runs of {runs[200]:.1f} s and {runs[2200]:.1f} s)")
PYEOF
        ;;
  # Where a CycleGAN / pix2pix step spends its time (eager bf16, plain loop): top kernels.
  profile) part 40 $B --families cyclegan pix2pix --variants eager-bf16 --sides plain --warmup 2 --steps 2 \
            --profile 2 --json /dev/null ;;
esac; done
"$PY" scripts/bench_train.py --render "$ROWS" --out "$OUT_DIR/train_speed.md" > /dev/null
cat "$OUT_DIR/train_speed.md"
