"""BraTS evaluation of predicted label maps against references: ``python -m tumorseg.evaluate``."""

from tumorseg.evaluate.folder import (
    COLUMNS,
    HD95_EMPTY,
    METRICS,
    EvaluationError,
    EvaluationResult,
    evaluate_folder,
    hd95,
    main,
    region_metrics,
    summarise,
    surface_distances,
    write_csv,
    write_json,
)

__all__ = [
    "COLUMNS",
    "HD95_EMPTY",
    "METRICS",
    "EvaluationError",
    "EvaluationResult",
    "evaluate_folder",
    "hd95",
    "main",
    "region_metrics",
    "summarise",
    "surface_distances",
    "write_csv",
    "write_json",
]
