"""End to end, host int16 volume -> host uint8 mask, plus a folder and peak device memory:
``sam-unet bench --parts pipeline``.

    python benchmarks/bench_pipeline.py --device cuda --variant res34 --volume 512 512 300

Any other ``sam-unet bench`` option may follow (``sam-unet bench --help``).
"""

import sys

from sam_unet.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--parts", "pipeline", *sys.argv[1:]]))
