"""tumorseg: 3D brain-tumour segmentation on multi-modal MRI with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
