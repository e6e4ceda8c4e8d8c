"""Datasets in the published (SA-Med2D) layout, NIfTI -> slices preparation, box prompts.

Modules: :mod:`layout` (folders, JSON files, PNG reading), :mod:`dataset` (TrainDataset,
TestDataset), :mod:`prepare` (prepare_dataset, PrepareOptions), :mod:`prompts` (boxes),
:mod:`sammed2d` (split an SA-Med2D-16M release per modality), :mod:`mni152` (the bundled MRI).
"""
