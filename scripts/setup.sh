#!/usr/bin/env bash
# One idempotent set-up step for a fresh Debian 12 machine:
#  1. Debian's QGIS 3.22, GDAL and Xvfb (system Python 3.11 bindings);
#  2. .venv on /usr/bin/python3 with --system-site-packages, so PyQGIS and GDAL
#     import there, plus the pinned packages of requirements.txt.
# A second run finds both done (a stamp holds the hash of requirements.txt) and
# returns in about a second without touching anything.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(qgis python3-qgis python3-gdal python3-numpy gdal-bin xvfb)

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ -x .venv/bin/python ] && [ -f .venv/.setup-stamp ] && [ "$(cat .venv/.setup-stamp)" = "$want" ]; then
    exit 0
fi

echo "setup: creating .venv and installing requirements.txt"
[ -x .venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages .venv
pip_args=(--quiet --disable-pip-version-check)
# The CPU build of torch is a local wheel on these machines.
[ -d /opt/wheels ] && pip_args+=(--find-links /opt/wheels)
.venv/bin/python -m pip install "${pip_args[@]}" -r requirements.txt
.venv/bin/python - <<'PY'
import numpy, onnxruntime, torch, mercantile, h5py, onnx, distributed
from osgeo import gdal
import qgis.core
assert numpy.__version__.startswith("1."), f"numpy {numpy.__version__}: Debian's GDAL/QGIS need numpy 1.x"
print(f"setup: numpy {numpy.__version__}, GDAL {gdal.__version__}, QGIS {qgis.core.Qgis.QGIS_VERSION}, "
      f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, distributed {distributed.__version__}")
PY
echo "$want" > .venv/.setup-stamp
