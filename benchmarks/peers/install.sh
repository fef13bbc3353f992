#!/usr/bin/env bash
# The other libraries of benchmarks/peers/ in their own venv (default .venv-bench), next to whybox.
# Their wheels require torchvision (kronfluence) or other torch builds, which on a CPU-only machine
# without a CPU torchvision means a multi-GB CUDA download; so they are installed without their
# dependencies, on the torch whybox uses, with the pure-Python dependencies they import added by hand.
# On a machine with CUDA torch and torchvision, `pip install -e ".[bench]"` does the same in one step.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-bench}
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet torch==2.13.0
"$VENV/bin/pip" install --quiet --no-deps -e .
"$VENV/bin/pip" install --quiet --no-deps "dattri>=0.3" "kronfluence>=1.0.1" "captum>=0.9" "pyDVL>=0.10"
"$VENV/bin/pip" install --quiet numpy scipy scikit-learn matplotlib tqdm jinja2 pillow pandas psutil accelerate einconv \
  einops opt_einsum safetensors huggingface_hub pyDeprecate joblib deprecated more-itertools "numcodecs<0.16" \
  "zarr>=3,<4" distributed  # pyDVL imports dask.distributed and zarr
"$VENV/bin/python" -c "import whybox, dattri, kronfluence, captum, pydvl; print('benchmark venv ready:', '$VENV')"
