"""Segment new scans with one trained model or an ensemble, in the scans' own geometry.

* ``cases``: the cases to segment (a dataset in any layout, or explicit modality files) and their reader;
* ``predictor``: the ``Predictor``, built from models or checkpoints, that turns a case into a
  label map on its source grid with the test-time settings recorded in each checkpoint;
* ``writers``: label maps, probability maps, figures and ``summary.csv``, written atomically;
* ``cli``: the command (``tumorseg-predict``, ``predict.py``): ``run(cfg)`` does all of the above for a
  folder of cases.

Checkpoints are found, downloaded and verified by ``tumorseg.checkpoints`` (the shipped model, the
default of ``predict.py``, among them).
"""

from tumorseg.labels import postprocess, region_probabilities
from tumorseg.predict.cases import InputCase, PredictionError, dataset_cases, explicit_case, read_case
from tumorseg.predict.cli import PredictReport, PredictSettings, format_report, predict, run
from tumorseg.predict.predictor import Prediction, Predictor

__all__ = [
    "InputCase",
    "PredictReport",
    "PredictSettings",
    "Prediction",
    "PredictionError",
    "Predictor",
    "dataset_cases",
    "explicit_case",
    "format_report",
    "postprocess",
    "predict",
    "read_case",
    "region_probabilities",
    "run",
]
