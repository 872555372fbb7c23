"""Training: the LightningModule, its losses and metrics, callbacks, loggers and the Hydra entry
point (``tumorseg.training.train.run``)."""
