"""Matting data: image IO, transforms, the synthetic set, the data-set folder, Composition-1k.

- ``MattingFolder``: torch Dataset over a folder written by ``dcp data synth`` / ``composite``
  (train crops or full test images; item format in its docstring).
- ``AdobeTrain`` / ``AdobeLayout``: Composition-1k training composited on the fly.
- ``make_sample``: one synthetic sample (deterministic by seed).
"""
from .adobe import AdobeLayout, AdobeTrain, composite_test, read_pairs, split_pairs, test_set_items
from .folder import MattingFolder, folder_names, to_item, write_folder
from .synth import make_sample

__all__ = ["AdobeLayout", "AdobeTrain", "MattingFolder", "composite_test", "folder_names", "make_sample",
           "read_pairs", "split_pairs", "test_set_items", "to_item", "write_folder"]
