"""tumorseg's Hydra configs, installed with the package as ``tumorseg.conf`` (``pkg://tumorseg.conf``)."""
