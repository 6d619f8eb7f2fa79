#!/usr/bin/env bash
# Set up a bare GPU machine that has torch/triton/transformers but no package index:
# install the carried wheels (.whl, filled by ../shared/tools/device-wheels.sh) and build the
# native request table in place. Source it:  source bench/gpu_setup.sh
# The wheels the image lacks (2026-12-02): ../shared/tools/device-wheels.sh cffi msgspec
#   meson-python gguf aiohttp-cors xgrammar apache-tvm-ffi pydantic pydantic-core
#   annotated-types typing-inspection jsonschema referencing rpds-py
#   jsonschema-specifications attrs
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
meson setup /tmp/aiollm-build --buildtype=release >/dev/null || return 1
meson compile -C /tmp/aiollm-build >/dev/null || return 1
cp /tmp/aiollm-build/aiollm/native/_table*.so aiollm/native/
python3 -c "import aiollm.native, torch; print('native ok; torch', torch.__version__, torch.cuda.get_device_name())"
