"""The models shipped with tumorseg: ``pretrained.json`` lists them, each ``.ckpt`` lies beside it.

``tumorseg.checkpoints.registry`` reads the list and verifies a file before it is loaded;
``predict.py`` uses the first model listed when no ``ckpt_path`` is given.
"""
