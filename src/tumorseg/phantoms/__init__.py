"""Synthetic BraTS-like phantoms: four MRI modalities and a tumour label map per case, on the MNI
ICBM152 2009 brain (``anatomy``), drawn by ``generator.make_phantom`` and written as BraTS 2020 case
folders by ``dataset.generate_dataset`` (``python -m tumorseg.phantoms OUT --cases N``).

The quick start, the tests and the phantom models learn from them; ``docs/explanation/phantoms.md``
says what they model and what they do not.
"""

from tumorseg.phantoms.dataset import MANIFEST, generate_dataset
from tumorseg.phantoms.generator import (
    DEFAULT_SHAPE,
    PHANTOM_VERSION,
    brats_affine,
    case_id,
    make_phantom,
    phantom_spacing,
)

__all__ = [
    "DEFAULT_SHAPE",
    "MANIFEST",
    "PHANTOM_VERSION",
    "brats_affine",
    "case_id",
    "generate_dataset",
    "make_phantom",
    "phantom_spacing",
]
