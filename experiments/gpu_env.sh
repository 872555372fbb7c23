# Sourced by the GPU check scripts: puts the wheels of .whl/ (what the GPU machine lacks:
# ../shared/tools/device-wheels.sh, plus `pip download --no-deps monai -d .whl`) and this
# checkout's package on the Python path.
if compgen -G ".whl/*.whl" >/dev/null; then
  python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# the phantoms' template without nilearn's 11 MB wheel (it would pass the 64 MiB a run carries):
#   unzip -j nilearn-*.whl 'nilearn/datasets/data/mni_icbm152_*' -d .whl/icbm152
if compgen -G ".whl/icbm152/*.nii.gz" >/dev/null; then
  export TUMORSEG_TEMPLATE_DIR="$PWD/.whl/icbm152"
fi
