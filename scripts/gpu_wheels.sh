#!/usr/bin/env bash
# Wheels of the project's dependencies that a bare GPU image lacks (it has torch, Lightning, torchvision, h5py,
# tensorboard), for a machine without internet: run here, copy `.whl/` along, then on the GPU machine
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   bash scripts/bench_gpu.sh
# PY_VERSION: the GPU image's Python (3.12 on the rented H100 image of benchmarks/train_speed_h100.md).
set -eu
PY_VERSION=${PY_VERSION:-3.12}
PIP=${PIP:-.venv/bin/pip}
mkdir -p .whl
"$PIP" download --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
    hydra-core==1.3.8 omegaconf==2.3.1 captum==0.9.0 nibabel==5.4.2 mlxtend==0.25.0
"$PIP" wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # PyPI has only its sdist (pure Python)
ls .whl
