"""Checking a whole dataset before using it: ``python -m tumorseg.data check ROOT``.

``check_dataset`` discovers the cases under a root, reads every one of them once (in parallel
when asked) and gathers what a training run would otherwise trip over one case at a time: the
problems of discovery and of every case's content, all at once, with the shapes, voxel
spacings and label values seen. Training code can call it and refuse a dataset whose report
has problems. Files are only read, never written.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tumorseg.data.layouts import CONVENTION_LAYOUTS, Case, DatasetError, Problem, convention_hint, discover
from tumorseg.data.reading import check_case
from tumorseg.labels import ALL_CONVENTIONS


@dataclass
class Report:
    """What ``check_dataset`` found.

    Attributes:
        root: The dataset root.
        layout: The layout of the dataset (see ``layouts.LAYOUTS``).
        cases: The cases discovered, sorted by case id.
        problems: Every problem found: discovery first, then each case's in case order.
        shapes: Image shape (X, Y, Z) -> number of cases, over the cases that could be read.
        spacings: Voxel size in mm -> number of cases, over the cases that could be read.
        label_values: Label values seen, in the labels' convention (e.g. 0, 1, 2, 4 for BraTS 2020).
        convention: The label convention the files were read in: the layout's own, or the one given.
        warnings: What may be wrong with the whole dataset, and what to do: e.g. BraTS 2024 labels
            (a resection cavity 4) in a dataset named like BraTS 2023, read as 2023's.
    """

    root: Path
    layout: str
    cases: list[Case]
    problems: list[Problem]
    shapes: Counter[tuple[int, int, int]]
    spacings: Counter[tuple[float, float, float]]
    label_values: list[int]
    convention: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


@dataclass(frozen=True)
class _CaseSummary:
    """What the report needs from one case: small, so that it travels cheaply between processes."""

    shape: tuple[int, int, int] | None
    spacing: tuple[float, float, float] | None
    label_values: tuple[int, ...]
    problems: list[Problem]


def check_dataset(
    root: str | os.PathLike,
    *,
    require_labels: bool = True,
    layout: str | None = None,
    convention: str | None = None,
    workers: int = 1,
    progress: bool = True,
) -> Report:
    """Discover the cases under ``root``, read each once and report every problem found.

    Args:
        root: Dataset root or single case folder (see ``layouts.discover``).
        require_labels: Count cases without a label file as problems. Defaults to True.
        layout: Read the files as this layout instead of detecting it. Defaults to None.
        convention: Read the label files in this convention instead of the layout's own
            (``brats2024`` for BraTS 2024 data, named like 2023's). Defaults to None.
        workers: Processes reading cases in parallel; 1 reads them in this process. Defaults to 1.
        progress: Show a progress bar on stderr while reading. Defaults to True.

    Returns:
        The report; ``report.ok`` is False when there are problems.

    Raises:
        DatasetError: The root is missing, not a folder, or holds no case of a known layout.
    """
    discovery = discover(root, require_labels=require_labels, layout=layout, convention=convention)
    summaries = _summarise_all(discovery.cases, workers, progress)
    readable = [summary for summary in summaries if summary.shape is not None]
    problems = [problem for summary in summaries for problem in summary.problems]
    return Report(
        root=discovery.root,
        layout=discovery.layout,
        cases=discovery.cases,
        problems=discovery.problems + problems,
        shapes=Counter(summary.shape for summary in readable),
        spacings=Counter(summary.spacing for summary in readable),
        label_values=sorted({value for summary in summaries for value in summary.label_values}),
        convention=convention or discovery.layout,
        warnings=_convention_warnings(discovery.layout, convention, problems),
    )


def _convention_warnings(layout: str, convention: str | None, problems: list[Problem]) -> list[str]:
    """A warning per convention that shares the layout's file names and would explain the label
    values found outside the convention read: BraTS 2024 data checked as BraTS 2023."""
    if convention is not None:
        return []
    warnings = []
    for other, shared in CONVENTION_LAYOUTS.items():
        allowed = set(ALL_CONVENTIONS[other])
        explained = [p for p in problems if p.case_id and p.label_values and set(p.label_values) <= allowed]
        cases = sorted({p.case_id for p in explained})
        if shared == layout and cases:
            shown = ", ".join(cases[:3]) + (f" and {len(cases) - 3} more" if len(cases) > 3 else "")
            values = sorted({v for p in explained for v in p.label_values})
            warnings.append(
                f"{len(cases)} case(s) of this {layout}-named dataset hold label values {values} ({shown}), "
                f"which the {other} convention defines; {convention_hint(other, layout)}."
            )
    return warnings


def _summarise_all(cases: list[Case], workers: int, progress: bool) -> list[_CaseSummary]:
    workers = min(workers, len(cases))
    # spawn, not fork: forking a process that runs threads (torch, loggers) can deadlock the children
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else nullcontext()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with pool, Progress(*columns, console=Console(stderr=True), transient=True, disable=not progress) as bar:
        summaries = pool.map(_summarise, cases) if workers > 1 else map(_summarise, cases)
        return list(bar.track(summaries, total=len(cases), description="Reading cases"))


def _summarise(case: Case) -> _CaseSummary:
    volume, problems = check_case(case)
    if volume is None:
        return _CaseSummary(None, None, (), problems)
    source_values = ()
    if volume.label is not None:
        # internal class -> the value the case's own label files use for it
        to_source = {internal: source for source, internal in ALL_CONVENTIONS[case.label_convention].items()}
        source_values = tuple(sorted(to_source[c] for c in to_source if np.any(volume.label == c)))
    # rounded so that float noise in the headers does not split one spacing into several
    spacing = tuple(round(size, 4) for size in volume.spacing)
    return _CaseSummary(volume.image.shape[1:], spacing, source_values, problems)


def format_problems(problems: Iterable[Problem]) -> str:
    """One line per problem, each naming the case and file at fault and what to do."""
    return "\n".join(f"- {problem}" for problem in problems)


def run(
    root: str | os.PathLike,
    *,
    require_labels: bool = True,
    layout: str | None = None,
    workers: int = 1,
    console: Console | None = None,
    convention: str | None = None,
) -> int:
    """The ``check`` command: print the report of ``root`` and return the exit status.

    Returns:
        0 when the dataset has no problem, 1 when it has, 2 when the root cannot be used at all.
    """
    # soft wrap: long paths stay on one line, whole, for copying and grepping
    console = console or Console(soft_wrap=True)
    try:
        report = check_dataset(
            root, require_labels=require_labels, layout=layout, convention=convention, workers=workers
        )
    except DatasetError as error:
        Console(stderr=True, soft_wrap=True).print(f"error: {error}", markup=False, highlight=False)
        return 2
    with_label = sum(case.label is not None for case in report.cases)
    left_out = {problem.case_id for problem in report.problems} - {case.case_id for case in report.cases} - {None}
    cases = f"{len(report.cases)} ({with_label} with a label, {len(report.cases) - with_label} without)"
    values = ", ".join(map(str, report.label_values))
    facts = {
        "root": str(report.root),
        "layout": f"{report.layout} ({'as given' if layout else 'detected'})",
        "cases": cases + (f", {len(left_out)} more left out for the problems below" if left_out else ""),
        "shapes": _counts(report.shapes, lambda shape: "x".join(map(str, shape))),
        "spacings": _counts(report.spacings, lambda spacing: "x".join(f"{size:g}" for size in spacing) + " mm"),
        "label values": f"{values} ({report.convention} convention)" if values else "none (no label read)",
    }
    grades = Counter(case.grade for case in report.cases if case.grade)
    if grades:
        unknown = len(report.cases) - sum(grades.values())
        facts["grades"] = ", ".join(f"{grade} {count}" for grade, count in sorted(grades.items())) + (
            f", {unknown} unknown" if unknown else ""
        )
    for name, value in facts.items():
        console.print(f"[bold]{name:<13}[/bold] {escape(value)}", highlight=False)
    for warning in report.warnings:
        console.print(f"warning: {warning}", markup=False, highlight=False)
    if report.ok:
        console.print("No problems found.", markup=False, highlight=False)
        return 0
    console.print(f"{len(report.problems)} problem(s):", markup=False, highlight=False)
    console.print(format_problems(report.problems), markup=False, highlight=False)
    return 1


def _counts(counter: Counter, show) -> str:
    """``counter``'s keys, most common first, each with its number of cases."""
    return ", ".join(f"{show(key)} ({count})" for key, count in counter.most_common()) or "none (no case read)"
