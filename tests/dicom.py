"""Synthetic CT DICOM slices for the loader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    series_uid: str,
    study_uid: str,
    instance_number: int,
    position_mm: float | None,
    pixel_spacing: tuple[float, float] | list[float],
    frame_uid: str | None = None,
    slice_thickness_mm: float | None = None,
    patient_id: str | None = None,
) -> None:
    """Write one uncompressed 16-bit CT slice with the given pixels ``[rows, columns]``.

    ``position_mm`` is the z position of an axial slice; None leaves out the position and the
    orientation. Optional tags that are None are left out.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = series_uid
    if frame_uid is not None:
        dataset.FrameOfReferenceUID = frame_uid
    dataset.Modality = "CT"
    if patient_id is not None:
        dataset.PatientID = patient_id
    dataset.InstanceNumber = instance_number
    if position_mm is not None:
        dataset.ImagePositionPatient = [0.0, 0.0, position_mm]
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    dataset.PixelSpacing = list(pixel_spacing)
    if slice_thickness_mm is not None:
        dataset.SliceThickness = slice_thickness_mm
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.PixelRepresentation = 0
    dataset.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
