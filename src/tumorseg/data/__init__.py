"""BraTS/MSD readers, dataset checks, the preprocessing cache and the datamodule.

Heavy modules (the datamodule pulls in Lightning and TorchIO) are imported where they are used:
``from tumorseg.data.datamodule import BratsDataModule``.
"""

from tumorseg.data.layouts import (
    LAYOUTS,
    Case,
    CaseError,
    DatasetError,
    Discovery,
    Problem,
    Volume,
    discover,
)
from tumorseg.data.reading import check_case, load_case
from tumorseg.labels import CLASSES, CONVENTIONS, MODALITIES, REGIONS, from_internal, to_internal, to_regions

__all__ = [
    "CLASSES",
    "CONVENTIONS",
    "LAYOUTS",
    "MODALITIES",
    "REGIONS",
    "Case",
    "CaseError",
    "DatasetError",
    "Discovery",
    "Problem",
    "Volume",
    "check_case",
    "discover",
    "from_internal",
    "load_case",
    "to_internal",
    "to_regions",
]
