"""BraTS/MSD readers, dataset checks, synthetic phantoms, the preprocessing cache and the datamodule."""

from .labels import CLASSES, CONVENTIONS, MODALITIES, REGIONS, from_internal, to_internal, to_regions

__all__ = ["CLASSES", "CONVENTIONS", "MODALITIES", "REGIONS", "from_internal", "to_internal", "to_regions"]
