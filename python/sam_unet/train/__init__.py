"""Training: losses (:mod:`losses`), metrics (:mod:`metrics`), the trainer for one process or
DDP under torchrun (:mod:`trainer`, with its :mod:`config`, learning-rate :mod:`schedule`,
:mod:`reproducibility` (seeds, RNG states, weight digests) and :mod:`run_log`), evaluation
(:mod:`evaluate`) and the demo checkpoint recipe (:mod:`demo_recipe`)."""
