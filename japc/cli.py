"""The ``japc`` command: import, train, evaluate, infer, demo."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from japc import __version__
from japc.errors import find_japc_error, print_error_line

__all__ = ["main", "build_parser"]

logger = logging.getLogger("japc")


def _parse_split(text: str) -> tuple[str, tuple[str, str]]:
    name, separator, span = text.partition("=")
    first, dots, last = span.partition("..")
    if not separator or not dots or not name or not first or not last:
        raise argparse.ArgumentTypeError(
            f"invalid split {text!r}; write NAME=FIRST..LAST, e.g. test=LIDC-IDRI-0081..LIDC-IDRI-0120"
        )
    return name, (first, last)


def _add_import(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "import",
        help="convert a folder of per-rater files into NIfTI volumes and a multi-rater datalist",
        description="Convert a multi-rater data folder (LIDC-IDRI nodule slices or QUBIQ) into NIfTI "
        "volumes plus a datalist.json that japc train and japc evaluate read.",
    )
    parser.add_argument("source", type=Path, help="folder to import")
    parser.add_argument("output", type=Path, help="folder for the NIfTI files and datalist.json")
    parser.add_argument("--layout", choices=["auto", "lidc", "qubiq"], default="auto", help="source layout (default: detect)")
    parser.add_argument(
        "--split",
        action="append",
        type=_parse_split,
        default=[],
        metavar="NAME=FIRST..LAST",
        help="put subjects FIRST..LAST (inclusive, compared as text) into split NAME; repeatable. "
        "Subjects in no range go to 'training'.",
    )
    parser.add_argument("--task", action="append", default=None, help="QUBIQ task to import (e.g. task01); repeatable")


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="self-supervised episodic training from a configuration file",
        description="Train a few-shot multi-rater segmenter on superpixel pseudo-labels (two-stage "
        "schedule when calibration is enabled).",
    )
    parser.add_argument("config", type=Path, help="YAML or JSON run configuration")
    parser.add_argument("--resume", action="store_true", help="continue from <output_dir>/checkpoints/latest.pt")
    parser.add_argument(
        "--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help="override configuration keys, e.g. training.iterations=200"
    )


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate",
        help="per-rater Dice of a checkpoint on a datalist split (support/query protocol)",
        description="Evaluate with the SSL-ALPNet support/query protocol and write dice_per_case.csv and summary.json.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by japc train")
    parser.add_argument("--datalist", type=Path, required=True, help="multi-rater datalist JSON")
    parser.add_argument("--split", default="test", help="datalist split to evaluate (default: test)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the Dice tables")
    parser.add_argument(
        "--supports",
        nargs="+",
        default=["first"],
        help="'first' (default: the split's first case), 'all' (every case in turn) or case ids",
    )
    parser.add_argument("--classes", nargs="+", default=None, help="class names to evaluate (default: all)")
    parser.add_argument("--chunks", type=int, default=3, help="chunks of the class range (default: 3)")
    parser.add_argument("--shots", type=int, default=1, help="support slices per chunk (default: 1)")
    parser.add_argument(
        "--no-oracle", action="store_true", help="score every query slice instead of the ground-truth class z-range"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="slices per encoder batch (default: 32)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def _add_infer(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "infer",
        help="segment query images once per rater of a support scan",
        description="Write, for every query, one mask per rater and the mean probability on the query's own grid.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by japc train")
    parser.add_argument("--support-image", type=Path, required=True, help="support image file or DICOM folder")
    parser.add_argument("--support-masks", type=Path, nargs="+", required=True, help="one mask file per rater")
    parser.add_argument("--raters", nargs="+", default=None, help="rater ids in the order of --support-masks")
    parser.add_argument("--queries", type=Path, nargs="+", required=True, help="query image files or folders")
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument("--label-value", type=int, default=None, help="class value in the masks (default: any non-zero)")
    parser.add_argument("--threshold", type=float, default=0.5, help="foreground probability threshold (default: 0.5)")
    parser.add_argument("--batch-size", type=int, default=16, help="query slices per encoder batch (default: 16)")
    parser.add_argument("--overlays", action="store_true", help="also write PNG overlays of a few slices")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def _add_report(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report",
        help="compare evaluation runs: Dice tables, a per-rater bar plot and paired t-tests",
        description="Compare folders written by japc evaluate. The first run is the baseline of one-tailed "
        "paired t-tests over the supports the runs share.",
    )
    parser.add_argument("runs", type=Path, nargs="+", help="evaluation folders (first = baseline)")
    parser.add_argument("--names", nargs="+", default=None, help="display names, one per run (default: folder names)")
    parser.add_argument("--output", type=Path, required=True, help="folder for report.md, report.json and the plot")


def _add_demo(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "demo",
        help="run import, training, evaluation and inference on brain atlases shipped with the dependencies",
        description="End-to-end demonstration on MNI brain templates with atlas delineations as raters "
        "(offline). Its Dice shows that the pipeline runs; it is not an accuracy benchmark.",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the demo datalist is built (default: ~/.cache/japc)")
    parser.add_argument("--output", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--iterations", type=int, default=None, help="training iterations (default: the demo's CPU budget)")


def build_parser() -> argparse.ArgumentParser:
    """Create the argument parser of the ``japc`` command."""
    parser = argparse.ArgumentParser(
        prog="japc", description="Few-shot multi-rater medical image segmentation (JAPC) on MONAI."
    )
    parser.add_argument("--version", action="version", version=f"japc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_import, _add_train, _add_evaluate, _add_infer, _add_report, _add_demo):
        add(commands)
    return parser


def _run_import(args: argparse.Namespace) -> None:
    from japc.pipeline.importers import detect_layout, import_lidc, import_qubiq

    layout = detect_layout(args.source) if args.layout == "auto" else args.layout
    splits = dict(args.split) or None
    if layout == "lidc":
        path = import_lidc(args.source, args.output, splits=splits)
    else:
        path = import_qubiq(args.source, args.output, tasks=args.task, splits=splits)
    print(f"Imported {layout} data from {args.source}; datalist: {path}")


def _run_train(args: argparse.Namespace) -> None:
    from japc.pipeline.config import load_config
    from japc.pipeline.training import train

    config = load_config(args.config, args.overrides)
    final = train(config, resume=args.resume)
    print(f"Final checkpoint: {final}")


def _run_evaluate(args: argparse.Namespace) -> None:
    from japc.pipeline.evaluation import EvaluationSettings, evaluate, format_summary

    supports: str | list[str] = args.supports[0] if args.supports in (["first"], ["all"]) else args.supports
    settings = EvaluationSettings(
        supports=supports,
        num_chunks=args.chunks,
        shots=args.shots,
        oracle=not args.no_oracle,
        classes=args.classes,
        batch_size=args.batch_size,
    )
    summary = evaluate(args.checkpoint, args.datalist, args.split, args.output, settings, device=args.device)
    print(format_summary(summary))
    print(f"Per-case Dice: {args.output / 'dice_per_case.csv'}; summary: {args.output / 'summary.json'}")


def _run_infer(args: argparse.Namespace) -> None:
    from japc.pipeline.inference import run_inference

    records = run_inference(
        args.checkpoint,
        args.support_image,
        args.support_masks,
        args.queries,
        args.output,
        raters=args.raters,
        label_value=args.label_value,
        overlays=args.overlays,
        threshold=args.threshold,
        batch_size=args.batch_size,
        device=args.device,
    )
    for record in records:
        counts = ", ".join(f"{rater}: {count}" for rater, count in record["foreground_voxels"].items())
        print(f"{record['query']}: foreground voxels per rater {counts}")
    print(f"Masks written under {args.output}")


def _run_report(args: argparse.Namespace) -> None:
    from japc.pipeline.report import write_report

    report = write_report(args.runs, args.output, args.names)
    print(report["text"], end="")
    print(f"Plot: {report['plot']}; report: {args.output / 'report.md'}")


def _run_demo(args: argparse.Namespace) -> None:
    from japc.pipeline.demo import run_demo

    run_demo(cache_dir=args.cache_dir, output_dir=args.output, iterations=args.iterations, echo=print)


def _silence_optional_codec_messages() -> None:
    """Hide MONAI's notice that the optional GPU DICOM codec (nvImageCodec) is not installed.

    MONAI 1.6 logs it and warns on every import; it concerns no japc feature.
    """
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def _remove_if_created_empty(folder: Path | None, existed: bool) -> None:
    """Remove an output folder that this command created and left empty because it failed."""
    if folder is None or existed or not folder.is_dir():
        return
    try:
        folder.rmdir()
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the ``japc`` command; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _silence_optional_codec_messages()
    level = logging.INFO
    if args.verbose:
        level = logging.DEBUG
    elif args.quiet:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runners = {
        "import": _run_import,
        "train": _run_train,
        "evaluate": _run_evaluate,
        "infer": _run_infer,
        "report": _run_report,
        "demo": _run_demo,
    }
    output = getattr(args, "output", None) if args.command in ("evaluate", "infer", "report") else None
    output_existed = output is not None and Path(output).exists()
    try:
        runners[args.command](args)
    except KeyboardInterrupt:
        print(f"japc {args.command}: interrupted", file=sys.stderr)
        _remove_if_created_empty(output, output_existed)
        return 130
    except Exception as error:
        cause: BaseException | str | None = find_japc_error(error)
        if cause is None and isinstance(error, OSError):
            # A full disk or a folder that vanished: name the file without a traceback (shown with -v).
            logger.debug("File operation failed", exc_info=error)
            cause = f"{error}. Check the path, the free disk space and the permissions."
        if cause is None:
            raise
        print_error_line(f"japc {args.command}", cause)
        _remove_if_created_empty(output, output_existed)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
