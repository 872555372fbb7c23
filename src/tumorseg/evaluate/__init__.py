"""BraTS evaluation of predicted label maps against references: ``python -m tumorseg.evaluate``.

For each case and region (WT, TC, ET; see ``tumorseg.labels``) it reports Dice, the 95th
percentile Hausdorff distance, sensitivity, specificity and the predicted and reference volumes,
with the BraTS conventions for empty masks (see ``tumorseg.evaluate.metrics``). With
``--metrics lesionwise`` it reports instead the BraTS 2023 lesion-wise Dice and HD95 and the
lesion counts of each region (see ``tumorseg.evaluate.lesionwise``).

The command line::

    python -m tumorseg.evaluate --pred predictions/ --ref MICCAI_BraTS2020_TrainingData/
    python -m tumorseg.evaluate --pred predictions/ --ref labels/ --labels brats2023 --out runs/metrics.csv
    python -m tumorseg.evaluate --pred predictions/ --ref BraTS2023/ --metrics lesionwise --task MET --out lesions.csv

``--pred`` is a folder of ``<case_id>.nii.gz`` label maps (what ``tumorseg.predict`` writes) or a
single file; ``--ref`` a dataset root that ``tumorseg.data.layouts.discover`` recognises, or a
folder of ``<case_id>.nii.gz`` label maps. It writes a CSV with one row per case and region, a
JSON with the same values, their summary and the cases that could not be evaluated, and prints
the summary.

Modules: ``metrics`` (Dice, surface distances, HD95, the metrics of one case), ``lesionwise``
(the BraTS 2023 lesion-wise metrics of one case, DeepMind's robust Hausdorff distance),
``baseline`` (the FLAIR-threshold baseline, a whole tumour with no learning), ``folder``
(pairing prediction and reference files, the worker processes, ``evaluate_folder``), ``reports``
(summary, CSV, JSON, printed table), ``cli`` (the command line).
"""

from tumorseg.evaluate.baseline import flair_threshold
from tumorseg.evaluate.cli import main
from tumorseg.evaluate.folder import LABEL_CHOICES, EvaluationError, evaluate_folder
from tumorseg.evaluate.lesionwise import (
    HD95_PENALTY,
    LESIONWISE_METRICS,
    TASKS,
    LesionwiseScore,
    lesionwise_case,
    lesionwise_region,
    robust_hausdorff,
)
from tumorseg.evaluate.metrics import HD95_EMPTY, METRICS, dice_from_counts, hd95, region_metrics, surface_distances
from tumorseg.evaluate.reports import (
    COLUMNS,
    LESIONWISE_COLUMNS,
    MODES,
    EvaluationResult,
    print_result,
    summarise,
    write_csv,
    write_json,
)

__all__ = [
    "COLUMNS",
    "HD95_EMPTY",
    "HD95_PENALTY",
    "LABEL_CHOICES",
    "LESIONWISE_COLUMNS",
    "LESIONWISE_METRICS",
    "METRICS",
    "MODES",
    "TASKS",
    "EvaluationError",
    "EvaluationResult",
    "LesionwiseScore",
    "dice_from_counts",
    "evaluate_folder",
    "flair_threshold",
    "hd95",
    "lesionwise_case",
    "lesionwise_region",
    "main",
    "print_result",
    "region_metrics",
    "robust_hausdorff",
    "summarise",
    "surface_distances",
    "write_csv",
    "write_json",
]
