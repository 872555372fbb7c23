"""Finding and reading the cases of a BraTS 2020/2021/2023 or MSD Task01 dataset.

``discover(root)`` recognises the layout from the file names under ``root`` and lists the cases
in it, with every problem found on the way (a missing modality, a duplicate case id...) rather
than stopping at the first; ``tumorseg.data.reading`` reads a case.

The layouts, with the file names of one case::

    brats2018  Brats18_CBICA_AAB_1/Brats18_CBICA_AAB_1_{flair,t1,t1ce,t2,seg}.nii.gz (BraTS 2017, 2018
               and 2019: Brats17_*, Brats18_*, BraTS19_*; case folders flat or under HGG/ and LGG/)
    brats2020  BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii[.gz]
    brats2021  BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz
    brats2023  BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}.nii.gz
    msd        dataset.json, imagesTr/BRATS_001.nii.gz (4D), labelsTr/BRATS_001.nii.gz, imagesTs/

The layout name is also the name of the case's label convention in ``labels.CONVENTIONS``,
unless the files are read in another convention that shares the naming (``CONVENTION_LAYOUTS``):
BraTS 2024 post-treatment data is named like 2023's but holds labels 1-4 (``convention="brats2024"``).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tumorseg.labels import ALL_CONVENTIONS, MODALITIES, convention_label_set

LAYOUTS = ("brats2018", "brats2020", "brats2021", "brats2023", "msd")
# label conventions that are not a layout's own -> the layout whose file names they share; nothing
# in the files tells them apart, so the user names them (data.convention, --convention)
CONVENTION_LAYOUTS = {"brats2024": "brats2023"}

# Per BraTS layout: case id pattern, separator between id and suffix, file suffix of each modality
# in MODALITIES order. The label is always "<id><sep>seg".
_BRATS_NAMING = {
    # BraTS 2017-2019 name cases after their source (2013 challenge, CBICA, TCIA sites, 2019's TMC):
    # Brats17_2013_10_1, Brats18_TCIA01_131_1, BraTS19_CBICA_AAB_1
    "brats2018": (r"(?:Brats|BraTS)1[789]_(?:[A-Za-z0-9]+_)+\d+", "_", ("flair", "t1", "t1ce", "t2")),
    "brats2020": (r"BraTS20_(?:Training|Validation)_\d+", "_", ("flair", "t1", "t1ce", "t2")),
    "brats2021": (r"BraTS2021_\d+", "_", ("flair", "t1", "t1ce", "t2")),
    # GLI and the other 2023 sub-challenges (MEN, MET, PED, SSA) share one naming
    "brats2023": (r"BraTS-[A-Za-z]+-\d+-\d+", "-", ("t2f", "t1n", "t1c", "t2w")),
}
_BRATS_FILE = {
    layout: re.compile(rf"(?P<case>{case})(?:{re.escape(sep)})(?P<suffix>{'|'.join((*suffixes, 'seg'))})\.nii(?:\.gz)?")
    for layout, (case, sep, suffixes) in _BRATS_NAMING.items()
}
# The Kaggle copy of BraTS 2020 ships case 355's label under its original name.
_KAGGLE_355 = ("BraTS20_Training_355", "W39_1998.09.19_Segm.nii")

_MSD_FILE = re.compile(r"(?P<case>BRATS_\d+)\.nii(?:\.gz)?")
_MSD_FOLDERS = {"imagesTr": "image", "imagesTs": "image", "labelsTr": "label"}
# dataset.json's "modality" entry of Task01, which is our MODALITIES order
MSD_CHANNELS = ("flair", "t1w", "t1gd", "t2w")

_EXAMPLES = {
    "brats2018": "Brats18_CBICA_AAB_1/Brats18_CBICA_AAB_1_flair.nii.gz (also Brats17_*, BraTS19_*; flat or in HGG/, LGG/)",
    "brats2020": "BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz (or .nii)",
    "brats2021": "BraTS2021_00000/BraTS2021_00000_flair.nii.gz",
    "brats2023": "BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz",
    "msd": "Task01_BrainTumour/dataset.json with imagesTr/BRATS_001.nii.gz and labelsTr/BRATS_001.nii.gz",
}
# Case folders lie in the root, one level below it (e.g. MICCAI_BraTS2020_TrainingData/), or are the root.
_SEARCH_DEPTH = 2


@dataclass(frozen=True)
class Case:
    """The files of one exam.

    Attributes:
        case_id: The exam's id, e.g. ``BraTS20_Training_001`` or ``BRATS_001``.
        layout: One of ``LAYOUTS``; also the name of the label convention in ``labels.CONVENTIONS``.
        images: The four modality files in ``MODALITIES`` order; for ``msd`` the one 4D file.
        label: The label file, or None where the case has none (validation and test data).
        convention: The label convention of ``label`` when it is not the layout's own (see
            ``CONVENTION_LAYOUTS``), else None.
        grade: ``"HGG"`` or ``"LGG"`` where the dataset says (BraTS 2017-2019 case folders under
            ``HGG/`` or ``LGG/``, or a ``name_mapping.csv`` with a Grade column), else None.
    """

    case_id: str
    layout: str
    images: tuple[Path, ...]
    label: Path | None
    convention: str | None = None
    grade: str | None = None

    @property
    def label_convention(self) -> str:
        """The convention the label file is read in (``labels.ALL_CONVENTIONS``)."""
        return self.convention or self.layout

    @property
    def files(self) -> tuple[Path, ...]:
        """The image files, then the label file if there is one."""
        return self.images if self.label is None else (*self.images, self.label)


@dataclass
class Volume:
    """One case in memory, voxels in the order they are stored.

    The arrays keep the memory order of NIfTI files (x varies fastest within each modality), not
    C order; ``np.ascontiguousarray`` makes a C-ordered copy where one is needed.

    Attributes:
        image: float32 array (4, X, Y, Z), the modalities in ``MODALITIES`` order.
        label: uint8 array (X, Y, Z) of internal classes 0-3 (see ``labels``), or None.
        affine: (4, 4) float64 voxel-to-world affine of the first image file.
        spacing: Voxel size in mm along X, Y, Z, from the header of the first image file.
    """

    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]


@dataclass(frozen=True)
class Problem:
    """Something wrong with a dataset, a case or a file; ``message`` also says what to do about it."""

    message: str
    case_id: str | None = None
    path: Path | None = None
    # label values outside the case's convention, where that is the problem (for ``check``'s hints)
    label_values: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        where = [f"case {self.case_id}"] if self.case_id else []
        where += [str(self.path)] if self.path else []
        return ": ".join([*where, self.message])


@dataclass
class Discovery:
    """What ``discover`` found under ``root``.

    Attributes:
        root: The folder searched.
        layout: The layout of the dataset, one of ``LAYOUTS``.
        cases: The usable cases, sorted by case id.
        problems: Everything found wrong; the cases they concern are not in ``cases``.
    """

    root: Path
    layout: str
    cases: list[Case]
    problems: list[Problem]


class DatasetError(ValueError):
    """The dataset root cannot be used at all: it is missing, empty or holds no known layout."""


class CaseError(ValueError):
    """A case cannot be loaded; the message names the case and the file at fault."""


def select_cases(spec) -> list[str]:
    """Case ids from ``spec``: a list of ids, or a file: a run's ``split.json`` (its validation
    cases, ``{"val": [...]}``), a JSON list of ids, or a text file with one id per line.

    Raises:
        ValueError: the file cannot be read or holds no case ids.
    """
    if spec is None:
        return []
    if not isinstance(spec, (str, os.PathLike)):
        return [str(c) for c in spec]
    path = Path(spec).expanduser()
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"case list {path} cannot be read: {err}") from err
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ValueError(f"case list {path} is not valid JSON: {err}") from err
        if isinstance(data, dict) and "val" in data:
            data = data["val"]
        if not isinstance(data, list) or not all(isinstance(c, str) for c in data):
            raise ValueError(f"case list {path} must hold a list of case ids or a split with a 'val' list.")
        ids = data
    else:
        ids = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not ids:
        raise ValueError(f"case list {path} names no case.")
    return ids


def check_convention(convention: str | None, layout: str | None = None) -> None:
    """Refuse a label convention that the files of ``layout`` (when known) cannot be in.

    Raises:
        ValueError: ``convention`` is unknown, or not ``layout``'s own nor one sharing its file names.
    """
    if convention is None:
        return
    if convention not in ALL_CONVENTIONS:
        raise ValueError(f"Unknown label convention {convention!r}; choose one of {', '.join(ALL_CONVENTIONS)}.")
    own = CONVENTION_LAYOUTS.get(convention, convention)
    if layout is not None and own != layout:
        raise ValueError(
            f"the {convention} label convention is read from files named like the {own} layout, but the dataset "
            f"is a {layout} dataset; leave the convention out to read its own ({layout})."
        )


def convention_hint(convention: str, layout: str) -> str:
    """What to pass to read a ``layout``-named dataset in ``convention`` (one of ``CONVENTION_LAYOUTS``)."""
    labels = convention_label_set(convention).name
    return (
        f"{convention} data is named like {layout}'s: check it with --convention {convention}, "
        f"train on it with data.convention={convention} labels={labels}"
    )


def discover(
    root: str | os.PathLike,
    *,
    require_labels: bool = False,
    layout: str | None = None,
    convention: str | None = None,
) -> Discovery:
    """Find the cases under ``root``.

    ``root`` is a dataset folder (the case folders may lie one level deeper, as in the official
    archives) or a single case folder. Files whose name starts with ``._`` (macOS resource forks),
    hidden folders and files that follow no known naming (``name_mapping.csv``...) are ignored.

    Args:
        root: The folder to search.
        require_labels: Report cases without a label file as problems (and leave them out).
            Defaults to False.
        layout: Read the files as this layout instead of detecting it. Defaults to None (detect:
            the layout with the most cases; files of other layouts are then problems).
        convention: Read the label files in this convention instead of the layout's own: one
            that shares the layout's file names (``brats2024`` for a ``brats2023``-named dataset).
            Defaults to None.

    Returns:
        The layout, the usable cases and the problems found.

    Raises:
        DatasetError: ``root`` does not exist, is not a folder, or holds no case of a known layout.
        ValueError: ``layout`` is not one of ``LAYOUTS``, or ``convention`` is unknown or does not
            fit the layout.
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}.")
    check_convention(convention, layout)
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(_no_dataset(root, "does not exist"))
    if not root.is_dir():
        raise DatasetError(_no_dataset(root, "is a file, not a folder; pass the folder that holds the dataset"))

    files, problems = _scan(root)
    found = _group(files)
    problems += _apply_msd_lists(found.get("msd", {}))
    counts = {name: len(cases) for name, cases in found.items() if cases}
    if layout is None:
        if not counts:
            raise DatasetError(_no_dataset(root, "holds no case of a known layout"))
        most = max(counts.values())
        tied = [name for name, count in counts.items() if count == most]
        if len(tied) > 1:
            raise DatasetError(
                f"{root} holds as many cases named like {' and like '.join(tied)} ({most} each); "
                f"pass the layout to use (--layout / layout=) or move one dataset out."
            )
        layout = tied[0]
    elif layout not in counts:
        seen = f" (found {', '.join(counts)} file names instead)" if counts else ""
        raise DatasetError(_no_dataset(root, f"holds no case of the {layout} layout{seen}"))

    # BraTS releases share patients (2021 contains 2020), so a root mixing layouts mixes datasets.
    for other in sorted(counts.keys() - {layout}):
        for case_id, places in sorted(found[other].items()):
            for place in places:
                problems.append(
                    Problem(
                        f"files named like the {other} layout in a {layout} dataset; move them out of {root} "
                        f"(or check them on their own with --layout {other})",
                        case_id,
                        place,
                    )
                )
    check_convention(convention, layout)
    cases, case_problems = _build_cases(
        layout, found[layout], require_labels, None if convention == layout else convention
    )
    grades, grade_problems = _grades(files, cases)
    cases = [replace(case, grade=grades.get(case.case_id)) for case in cases]
    return Discovery(root, layout, cases, problems + case_problems + grade_problems)


GRADES = ("HGG", "LGG")
# BraTS 2019 and 2020 list every case's grade and its ids in other releases here
_NAME_MAPPING = "name_mapping.csv"


def _grades(files: list[Path], cases: list[Case]) -> tuple[dict[str, str], list[Problem]]:
    """Case id -> ``"HGG"``/``"LGG"``: from the folder a case folder lies in (BraTS 2017-2019 ship
    ``HGG/`` and ``LGG/``), else from a ``name_mapping.csv`` whose Grade column gives it."""
    grades, problems = {}, []
    ids = {case.case_id for case in cases}
    for path in (p for p in files if p.name == _NAME_MAPPING):
        try:
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            problems.append(Problem(f"cannot read the grades listed here ({error}); fix or delete the file", path=path))
            continue
        for row in rows:
            grade = str(row.get("Grade") or "").strip().upper()
            if grade in GRADES:
                for value in row.values():
                    if isinstance(value, str) and value.strip() in ids:
                        grades[value.strip()] = grade
    for case in cases:
        folder = case.images[0].parent.parent.name.upper()
        if case.layout != "msd" and folder in GRADES:
            grades[case.case_id] = folder
    return grades, problems


def _no_dataset(root: Path, what: str) -> str:
    known = "\n".join(f"  {name:<10} {example}" for name, example in _EXAMPLES.items())
    return (
        f"Dataset root {root} {what}. Searched it and {_SEARCH_DEPTH} folder levels below for these layouts:\n"
        f"{known}\n"
        f"Point the root at the folder that holds the case folders, or at one case folder."
    )


def _scan(root: Path) -> tuple[list[Path], list[Problem]]:
    """Files in ``root`` and in its folders down to ``_SEARCH_DEPTH`` levels (``HGG/`` and ``LGG/``
    not counted), but hidden ones."""
    files, problems = [], []
    folders = [(root, 0)]
    while folders:
        folder, depth = folders.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            problems.append(Problem(f"cannot list this folder ({error}); fix its permissions", path=folder))
            continue
        for entry in entries:
            # "._name" are macOS resource forks of "name" (the MSD archive has them), ".git" and
            # ".ipynb_checkpoints" never hold cases
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if depth < _SEARCH_DEPTH:
                    # BraTS 2017-2019's grade folders are one level the archive adds, not one the user chose
                    grade_folder = entry.name.upper() in GRADES
                    folders.append((Path(entry.path), depth + (0 if grade_folder else 1)))
            elif entry.is_file():
                files.append(Path(entry.path))
    return files, problems


# layout -> case id -> place (case folder, or MSD dataset root) -> role -> candidate files.
# A role is a modality of MODALITIES, "image" (the MSD 4D file) or "label".
_Found = dict[str, dict[str, dict[Path, dict[str, list[Path]]]]]


def _group(files: list[Path]) -> _Found:
    found: _Found = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    for path in files:
        match = _classify(path)
        if match is not None:
            layout, case_id, role = match
            place = path.parent.parent if layout == "msd" else path.parent
            found[layout][case_id][place][role].append(path)
    return found


def _classify(path: Path) -> tuple[str, str, str] | None:
    """(layout, case id, role) of a file named like one of the layouts, else None."""
    for layout, pattern in _BRATS_FILE.items():
        match = pattern.fullmatch(path.name)
        if match:
            suffixes = _BRATS_NAMING[layout][2]
            suffix = match["suffix"]
            return layout, match["case"], "label" if suffix == "seg" else MODALITIES[suffixes.index(suffix)]
    if (path.parent.name, path.name) == _KAGGLE_355:
        return "brats2020", _KAGGLE_355[0], "label"
    match = _MSD_FILE.fullmatch(path.name)
    if match and path.parent.name in _MSD_FOLDERS:
        return "msd", match["case"], _MSD_FOLDERS[path.parent.name]
    return None


def _apply_msd_lists(found: dict[str, dict[Path, dict[str, list[Path]]]]) -> list[Problem]:
    """Replace what was found on disk by the lists of each MSD root's dataset.json, where there is one.

    A listed file that is missing drops its case; a file on disk that is not listed is left out.
    Both are problems.
    """
    problems = []
    for msd_root in sorted({place for places in found.values() for place in places}):
        index = msd_root / "dataset.json"
        if not index.is_file():
            continue
        listed, index_problems = _read_msd_index(index)
        problems += index_problems
        if listed is None:
            continue
        on_disk = {
            path: case_id
            for case_id, places in found.items()
            for path in (p for paths in places.get(msd_root, {}).values() for p in paths)
        }
        for path in sorted(on_disk.keys() - {p for roles in listed.values() for p in roles.values()}):
            problems.append(
                Problem(
                    "on disk but not listed in dataset.json; add it to the 'training' or 'test' list, or delete it",
                    on_disk[path],
                    path,
                )
            )
        for places in found.values():
            places.pop(msd_root, None)
        for case_id, roles in listed.items():
            missing = [path for path in roles.values() if not path.is_file()]
            for path in missing:
                problems.append(
                    Problem(
                        "listed in dataset.json but missing on disk; restore the file or remove the case from the list",
                        case_id,
                        path,
                    )
                )
            if not missing:
                found[case_id][msd_root] = {role: [path] for role, path in roles.items()}
    for case_id in [case_id for case_id, places in found.items() if not places]:
        del found[case_id]
    return problems


def _read_msd_index(index: Path) -> tuple[dict[str, dict[str, Path]] | None, list[Problem]]:
    """Case id -> role -> path from an MSD dataset.json ("training" with labels, "test" without)."""
    what_to_do = "fix it, or delete it to pair imagesTr/ with labelsTr/ by file name"
    try:
        content = json.loads(index.read_text())
        entries = [(item["image"], item["label"]) for item in content.get("training", [])]
        entries += [(image, None) for image in content.get("test", [])]
        channels = tuple(str(name).lower() for _, name in sorted(content.get("modality", {}).items()))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        return None, [Problem(f"cannot read the case lists ({error!r}); {what_to_do}", path=index)]

    problems = []
    if channels and channels != MSD_CHANNELS:
        problems.append(
            Problem(
                f"the channels are {channels}, but tumorseg reads MSD images as {MSD_CHANNELS} "
                f"(flair, t1, t1ce, t2); reorder the channels of the images to that order",
                path=index,
            )
        )
    listed = {}
    for image, label in entries:
        image_path = index.parent / image
        match = _MSD_FILE.fullmatch(image_path.name)
        if match is None:
            problems.append(Problem(f"lists {image!r}, which is not named BRATS_NNN.nii.gz; {what_to_do}", path=index))
            continue
        listed[match["case"]] = (
            {"image": image_path} if label is None else {"image": image_path, "label": index.parent / label}
        )
    return listed, problems


def _build_cases(
    layout: str, found: dict[str, dict[Path, dict[str, list[Path]]]], require_labels: bool, convention: str | None
) -> tuple[list[Case], list[Problem]]:
    cases, problems = [], []
    image_roles = ("image",) if layout == "msd" else MODALITIES
    for case_id in sorted(found):
        places = found[case_id]
        if len(places) > 1:
            listing = ", ".join(str(place) for place in sorted(places))
            problems.append(Problem(f"the case id is found in {len(places)} places ({listing}); keep one", case_id))
            continue
        ((place, roles),) = places.items()
        if require_labels and "label" not in roles and layout == "msd" and _in_msd_test_set(roles):
            continue  # MSD's imagesTs is the unlabelled test set, not a broken training case
        case_problems = []
        for role, paths in sorted(roles.items()):
            if len(paths) > 1:
                names = ", ".join(path.name for path in sorted(paths))
                case_problems.append(
                    Problem(f"{len(paths)} candidate files for the {role} ({names}); keep one", case_id, place)
                )
        for role in image_roles:
            if role not in roles:
                expected = _expected_name(layout, case_id, role, roles)
                what = "4D image" if layout == "msd" else f"{role} image"
                case_problems.append(
                    Problem(f"the {what} is missing: expected {expected}; add it or remove the case", case_id, place)
                )
        if require_labels and "label" not in roles:
            expected = _expected_name(layout, case_id, "label", roles)
            case_problems.append(
                Problem(
                    f"no label file: expected {expected}; add it, or check without labels "
                    f"(--no-labels) if these are validation or test data",
                    case_id,
                    place,
                )
            )
        problems += case_problems
        if not case_problems:
            label = roles["label"][0] if "label" in roles else None
            cases.append(Case(case_id, layout, tuple(roles[role][0] for role in image_roles), label, convention))
    return cases, problems


def _in_msd_test_set(roles: dict[str, list[Path]]) -> bool:
    return all(path.parent.name == "imagesTs" for path in roles.get("image", []))


def _expected_name(layout: str, case_id: str, role: str, roles: dict[str, list[Path]]) -> str:
    """The file name that ``role`` of the case should have, with the extension its other files use."""
    others = [path for paths in roles.values() for path in paths]
    extension = ".nii" if others and all(path.name.endswith(".nii") for path in others) else ".nii.gz"
    if layout == "msd":
        return f"{'labelsTr' if role == 'label' else 'imagesTr'}/{case_id}{extension}"
    _, separator, suffixes = _BRATS_NAMING[layout]
    suffix = "seg" if role == "label" else suffixes[MODALITIES.index(role)]
    return f"{case_id}{separator}{suffix}{extension}"
