"""Training: losses (:mod:`losses`), metrics (:mod:`metrics`), the trainer for one process or
DDP under torchrun (:mod:`trainer`), evaluation (:mod:`evaluate`) and the demo checkpoint
recipe (:mod:`demo_recipe`)."""
