"""Model throughput against the eager fp32 baseline: ``sam-unet bench --parts ceilings,model``.

    python benchmarks/bench_model.py --device cuda --variant res34 --batches 1 32 64
    python benchmarks/bench_model.py --device cuda --configs tensorrt:fp16 --engine m.engine

Any other ``sam-unet bench`` option may follow (``sam-unet bench --help``).
"""

import sys

from sam_unet.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--parts", "ceilings,model", *sys.argv[1:]]))
