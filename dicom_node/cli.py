"""The ``dicom-node`` command.

Exit codes: 0 success; 1 the operation failed (peer refused, nothing to do
where something was expected); 2 bad usage or an invalid configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from dicom_node import __version__
from dicom_node.config import ConfigError, Destination, load_config
from dicom_node.logs import setup_logging
from pipelines.card import CardError

log = logging.getLogger("dicom_node")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = os.environ.get("DICOM_NODE_CONFIG", "config.yaml")
PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


def _peer(text: str) -> Destination:
    match = PEER.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not AE@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)"
        )
    return Destination(ae_title=match["ae"], host=match["host"], port=int(match["port"]))


def _files(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{raw} does not exist")
    return out


# --- commands -----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from dicom_node.service import Node
    from dicom_node.tls import TLSError, server_context

    config = load_config(args.config)
    setup_logging(config.logging.level)
    if config.node.tls is not None:
        try:  # fail here with the file named, not later in each receiver process
            server_context(config.node.tls)
        except TLSError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    Node(args.config).serve()
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from pipelines.card import CardError, load_card

    config = load_config(args.config)
    problems = 0
    for name, spec in config.pipelines.items():
        try:
            card = load_card(spec.card)
            print(f"pipeline {name}: model {card.name} {card.version} ({card.pipeline}) ok")
        except CardError as exc:
            print(f"pipeline {name}: {exc}", file=sys.stderr)
            problems += 1
    from dicom_node.tls import TLSError, client_context, server_context

    tls = [("node.tls", config.node.tls, server_context)] + [
        (f"destinations.{name}.tls", dest.tls, client_context)
        for name, dest in config.destinations.items()
    ]
    for where, settings, make in tls:
        if settings is None:
            continue
        try:
            make(settings)
            print(f"{where}: certificates load")
        except TLSError as exc:
            print(f"{where}: {exc}", file=sys.stderr)
            problems += 1
    print(
        f"{args.config}: valid ({len(config.routes)} routes, {len(config.destinations)} destinations, "
        f"{len(config.node.peers)} peers)"
    )
    return EXIT_FAILED if problems else EXIT_OK


def cmd_echo(args: argparse.Namespace) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    target = args.to
    if target is None:
        node = load_config(args.config).node
        host = "127.0.0.1" if node.host in ("0.0.0.0", "::") else node.host
        target = Destination(ae_title=node.ae_title, host=host, port=node.port)
    ae = AE(ae_title=args.calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = args.timeout
    assoc = ae.associate(target.host, target.port, ae_title=target.ae_title)
    if not assoc.is_established:
        print(
            f"association to {target.ae_title}@{target.host}:{target.port} failed", file=sys.stderr
        )
        return EXIT_FAILED
    status = assoc.send_c_echo()
    assoc.release()
    code = getattr(status, "Status", None)
    if code != 0x0000:
        print(f"C-ECHO answered {code}", file=sys.stderr)
        return EXIT_FAILED
    print(f"C-ECHO to {target.ae_title}@{target.host}:{target.port}: success")
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    from dicom_node.dispatch.destinations import SendError
    from dicom_node.dispatch.scu import send_dicom

    files = _files(args.paths)
    if not files:
        print("no files to send", file=sys.stderr)
        return EXIT_FAILED
    try:
        send_dicom(args.to, files, calling_ae=args.calling_ae, timeout=args.timeout)
    except SendError as exc:
        print(f"send failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"sent {len(files)} files to {args.to.ae_title}@{args.to.host}:{args.to.port}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from dicom_node.status import collect, format_status

    config = load_config(args.config)
    report = collect(config)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_status(report))
    return EXIT_OK


def cmd_route(args: argparse.Namespace) -> int:
    from dicom_node.route.explain import explain_paths, format_explanation

    config = load_config(args.config)
    if not args.explain:
        print("nothing to do: give --explain PATH...", file=sys.stderr)
        return EXIT_USAGE
    explanations = explain_paths(config.routes, [Path(p) for p in args.explain], args.calling_ae)
    print(format_explanation(explanations))
    return EXIT_OK if explanations else EXIT_FAILED


def cmd_resend(args: argparse.Namespace) -> int:
    from dicom_node.db import make_engine, migrate, session_factory
    from dicom_node.dispatch import outbox

    config = load_config(args.config)
    engine = make_engine(config.storage.database_url)
    migrate(engine)
    count = outbox.resend(
        session_factory(engine), args.ids or (), include_delivered=args.include_delivered
    )
    print(f"{count} deliveries queued again")
    return EXIT_OK if count else EXIT_FAILED


def cmd_build_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import build_demo

    setup_logging("INFO")
    cards = build_demo(Path(args.models_dir), seed=args.seed, force=args.force, only=args.only)
    for card in cards:
        print(f"demo model ready: {card}")
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    import csv

    from pipelines.common.phantoms import write_radiograph_dataset

    out = Path(args.out)
    phantoms = write_radiograph_dataset(
        out, n=args.n, seed=args.seed, lesion_fraction=args.lesion_fraction
    )
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "sop_instance_uid", "lesion", "row", "col", "radius"])
        for p in phantoms:
            lesion = p.lesion
            writer.writerow(
                [
                    p.path.name,
                    p.sop_instance_uid,
                    int(p.has_lesion),
                    *(
                        (f"{lesion.row:.1f}", f"{lesion.col:.1f}", f"{lesion.radius:.1f}")
                        if lesion
                        else ("", "", "")
                    ),
                ]
            )
    print(f"wrote {len(phantoms)} synthetic radiographs (DX) and labels.csv to {out}")
    return EXIT_OK


def cmd_synth_ich(args: argparse.Namespace) -> int:
    from pipelines.ich.synth import write_rsna_dataset

    labels, slices = write_rsna_dataset(
        Path(args.out),
        patients=args.patients,
        seed=args.seed,
        n_slices=args.slices,
        size=args.size,
        positive_fraction=args.positive_fraction,
    )
    positives = sum(s.labels["any"] for s in slices)
    print(
        f"wrote {len(slices)} synthetic head CT slices of {args.patients} patients "
        f"({positives} with hemorrhage) to {Path(args.out) / 'dicom'} and labels to {labels}"
    )
    return EXIT_OK


def cmd_train_ich(args: argparse.Namespace) -> int:
    from pipelines.common.augment import AugmentSpec
    from pipelines.ich.data import DataError
    from pipelines.ich.train import IchRecipe, train_ich

    setup_logging("INFO")
    size = args.size or (380 if args.backbone.startswith("efficientnet") else 224)
    recipe = IchRecipe(
        backbone=args.backbone,
        size=size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        pretrained=args.pretrained or "",
        cache=args.cache,
        seed=args.seed,
        augment=AugmentSpec(mixup_alpha=args.mixup_alpha),
    )
    try:
        card = train_ich(
            args.dicom_dir,
            args.labels,
            args.out,
            recipe,
            name=args.name,
            device=args.device,
            synthetic=args.synthetic,
            workers=args.workers,
            say=print,
        )
    except DataError as exc:
        print(f"data error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"model ready: {card} (route series to it with a pipelines: entry naming this card)")
    return EXIT_OK


def cmd_evaluate_ich(args: argparse.Namespace) -> int:
    from pipelines.ich.data import DataError
    from pipelines.ich.evaluate import evaluate_ich, format_report

    setup_logging("WARNING")
    try:
        report = evaluate_ich(
            args.model,
            args.dicom_dir,
            args.labels,
            args.out,
            device=args.device,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
        )
    except DataError as exc:
        print(f"data error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(format_report(report))
    print(f"saved {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'roc.png'}")
    return EXIT_OK


def cmd_synth_cxr(args: argparse.Namespace) -> int:
    from pipelines.cxr.synth import write_cxr_dataset

    data = write_cxr_dataset(
        Path(args.out),
        n=args.n,
        seed=args.seed,
        size=args.size,
        finding_rate=args.finding_rate,
        monochrome1_fraction=args.monochrome1_fraction,
    )
    boxes = json.loads(data.annotations.read_text())["annotations"]
    print(
        f"wrote {len(data.images)} synthetic chest radiographs (DX) of {len(data.patients)} "
        f"patients to {data.images_dir}, finding masks to {data.masks_dir} and {len(boxes)} "
        f"COCO boxes to {data.annotations}"
    )
    return EXIT_OK


def cmd_masks_to_coco(args: argparse.Namespace) -> int:
    from pipelines.cxr.coco import CocoError, masks_to_coco, split_by_patient, write_coco

    out = Path(args.out)
    try:
        coco = masks_to_coco(
            Path(args.images), Path(args.masks), args.classes or None, min_pixels=args.min_pixels
        )
        write_coco(coco, out)
        print(
            f"wrote {out}: {len(coco['images'])} images, {len(coco['annotations'])} boxes, "
            f"classes {', '.join(c['name'] for c in coco['categories'])}"
        )
        if args.split:
            names = ("train", "val", "test")[: len(args.split)]
            parts = split_by_patient(coco, args.split, seed=args.seed, images_dir=Path(args.images))
            for name, part in zip(names, parts, strict=True):
                path = out.with_name(f"{out.stem}.{name}{out.suffix}")
                write_coco(part, path)
                patients = len({img["patient_id"] for img in part["images"]})
                print(f"wrote {path}: {len(part['images'])} images of {patients} patients")
    except CocoError as exc:
        print(f"data error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_train_cxr(args: argparse.Namespace) -> int:
    from pipelines.common.augment import DetectionAugmentSpec
    from pipelines.cxr.coco import CocoError
    from pipelines.cxr.data import DetectionDataError
    from pipelines.cxr.train import CxrRecipe, train_cxr

    setup_logging("INFO")
    recipe = CxrRecipe(
        architecture=args.architecture,
        size=args.size,
        max_size=max(args.max_size, args.size),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=not args.no_nesterov,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        augment=DetectionAugmentSpec(
            rotation=args.rotation, brightness=args.brightness, contrast=args.contrast
        ),
        pretrained=args.pretrained or "",
        explainer=args.explainer,
        cache=args.cache,
        seed=args.seed,
    )
    try:
        card = train_cxr(
            args.images,
            args.coco,
            args.out,
            recipe,
            name=args.name,
            device=args.device,
            synthetic=args.synthetic,
            workers=args.workers,
            say=print,
        )
    except (CocoError, DetectionDataError) as exc:
        print(f"data error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"model ready: {card} (route series to it with a pipelines: entry naming this card)")
    return EXIT_OK


def cmd_evaluate_cxr(args: argparse.Namespace) -> int:
    from pipelines.cxr.coco import CocoError
    from pipelines.cxr.data import DetectionDataError
    from pipelines.cxr.evaluate import evaluate_cxr, format_report

    setup_logging("WARNING")
    try:
        report = evaluate_cxr(
            args.model,
            args.images,
            args.coco,
            out_dir=args.out,
            device=args.device,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
        )
    except (CocoError, DetectionDataError) as exc:
        print(f"data error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(format_report(report))
    print(f"saved {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'precision_recall.png'}")
    return EXIT_OK


# --- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description="An AI node for hospital imaging networks: receives studies over DICOM, "
        "runs model pipelines, returns SR and heatmaps.",
    )
    parser.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            default=DEFAULT_CONFIG,
            help="config file (default: $DICOM_NODE_CONFIG or ./config.yaml)",
        )
        return p

    p = with_config(sub.add_parser("serve", help="run the node"))
    p.set_defaults(func=cmd_serve)

    p = with_config(sub.add_parser("check-config", help="validate config.yaml and the model cards"))
    p.set_defaults(func=cmd_check_config)

    p = with_config(sub.add_parser("echo", help="C-ECHO a DICOM peer (default: this node)"))
    p.add_argument("--to", type=_peer, help="AE@HOST:PORT (default: the node in --config)")
    p.add_argument("--calling-ae", default="DICOM_NODE_CLI")
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("send", help="C-STORE files or folders to a DICOM peer over one association")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--to", type=_peer, required=True, help="AE@HOST:PORT")
    p.add_argument("--calling-ae", default="DICOM_NODE_CLI")
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=cmd_send)

    p = with_config(sub.add_parser("status", help="what the node holds and does: queues, failures"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = with_config(sub.add_parser("route", help="test routing rules against DICOM files"))
    p.add_argument("--explain", nargs="+", metavar="PATH", help="files or folders to explain")
    p.add_argument("--calling-ae", help="evaluate calling_ae conditions as if sent by this AE")
    p.set_defaults(func=cmd_route)

    p = with_config(sub.add_parser("resend", help="queue dead-lettered deliveries again"))
    p.add_argument("ids", nargs="*", type=int, metavar="DELIVERY_ID", help="default: all dead")
    p.add_argument(
        "--include-delivered", action="store_true", help="also resend deliveries that succeeded"
    )
    p.set_defaults(func=cmd_resend)

    synth = sub.add_parser(
        "synth", help="generate synthetic phantoms as real DICOM (not patient data)"
    )
    ssub = synth.add_subparsers(dest="synth_kind", required=True, metavar="KIND")
    p = ssub.add_parser(
        "radiograph", help="chest-like DX radiographs, some with a bright round lesion"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=10, help="number of single-image studies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lesion-fraction", type=float, default=0.5)
    p.set_defaults(func=cmd_synth)
    p = ssub.add_parser("ich", help="head CT series in RSNA hemorrhage format (DICOM + labels.csv)")
    p.add_argument("--out", required=True, help="output folder (dicom/, labels.csv)")
    p.add_argument("--patients", type=int, default=10, help="number of patients (one series each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slices", type=int, default=24, help="axial slices per series")
    p.add_argument("--size", type=int, default=256, help="rows = columns of each slice")
    p.add_argument("--positive-fraction", type=float, default=0.6)
    p.set_defaults(func=cmd_synth_ich)
    p = ssub.add_parser(
        "cxr", help="chest radiographs with findings: DX DICOM, binary masks and COCO boxes"
    )
    p.add_argument("--out", required=True, help="output folder (images/, masks/, annotations.json)")
    p.add_argument("--n", type=int, default=20, help="number of images (two per patient)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=512, help="rows = columns of each image")
    p.add_argument("--finding-rate", type=float, default=0.5, help="chance of each finding")
    p.add_argument("--monochrome1-fraction", type=float, default=0.1)
    p.set_defaults(func=cmd_synth_cxr)

    dataset = sub.add_parser("dataset", help="prepare training data in a study's format")
    dsub = dataset.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    p = dsub.add_parser(
        "masks-to-coco",
        help="binary finding masks (MASKS/<class>/<image stem>.png) to COCO boxes (seed 001)",
    )
    p.add_argument("--images", required=True, help="folder of the DICOM images")
    p.add_argument(
        "--masks", required=True, help="folder with one subfolder of PNG masks per class"
    )
    p.add_argument("--out", required=True, help="COCO JSON to write")
    p.add_argument(
        "--classes", nargs="+", help="class names in label order (default: the mask folders)"
    )
    p.add_argument("--min-pixels", type=int, default=4, help="smaller mask components are noise")
    p.add_argument(
        "--split",
        nargs="+",
        type=float,
        metavar="SHARE",
        help="also write OUT.train/.val[/.test].json split by Patient ID, e.g. 0.8 0.2",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    p.set_defaults(func=cmd_masks_to_coco)

    train = sub.add_parser("train", help="train a pipeline's model from data in its study format")
    tsub = train.add_subparsers(dest="train_kind", required=True, metavar="PIPELINE")
    p = tsub.add_parser("ich", help="seed 002 from RSNA-format head CT (ID_<sop>_<subtype>,Label)")
    p.add_argument(
        "--dicom-dir", required=True, help="folder of DICOM slices (searched recursively)"
    )
    p.add_argument("--labels", required=True, help="RSNA labels CSV")
    p.add_argument("--out", required=True, help="model folder to write, e.g. models/ich-site")
    p.add_argument("--name", help="card name (default: the folder name)")
    p.add_argument("--backbone", default="resnet50", help="resnet50 (seed) or efficientnet_b3, ...")
    p.add_argument("--size", type=int, help="input pixels (default 224; 380 for EfficientNet-B3)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--mixup-alpha", type=float, default=0.2)
    p.add_argument("--pretrained", help="local torchvision ImageNet weights of the backbone")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: CUDA when present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", action="store_true", help="keep inputs in memory (small data)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes reading slices")
    p.add_argument("--synthetic", action="store_true", help="the data are generated phantoms")
    p.set_defaults(func=cmd_train_ich)
    p = tsub.add_parser(
        "cxr-findings", help="seed 001 Faster R-CNN from DICOM chest radiographs + COCO boxes"
    )
    p.add_argument("--images", required=True, help="folder the COCO file_name entries are in")
    p.add_argument("--coco", required=True, help="COCO detection JSON (see dataset masks-to-coco)")
    p.add_argument("--out", required=True, help="model folder to write, e.g. models/cxr-site")
    p.add_argument("--name", help="card name (default: the folder name)")
    p.add_argument(
        "--architecture",
        default="fasterrcnn_resnet50_fpn",
        help="fasterrcnn_resnet50_fpn (seed), fasterrcnn_mobilenet_v3_large_fpn (CPU sites), "
        "fasterrcnn_resnet18_fpn",
    )
    p.add_argument("--size", type=int, default=800, help="shorter side of the input, pixels")
    p.add_argument("--max-size", type=int, default=1333, help="cap on the longer side")
    p.add_argument("--epochs", type=int, default=18)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--no-nesterov", action="store_true", help="plain momentum instead of Nesterov")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", choices=["constant", "onecycle"], default="constant")
    p.add_argument("--rotation", type=float, default=5.0, help="max rotation, degrees")
    p.add_argument("--brightness", type=float, default=0.1)
    p.add_argument("--contrast", type=float, default=0.1)
    p.add_argument(
        "--pretrained", help="local torchvision COCO weights of the architecture (fine-tuning)"
    )
    p.add_argument("--explainer", choices=["ablationcam", "eigencam"], default="ablationcam")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: CUDA when present)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", action="store_true", help="keep prepared images in memory")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes reading images")
    p.add_argument("--synthetic", action="store_true", help="the data are generated phantoms")
    p.set_defaults(func=cmd_train_cxr)

    evaluate = sub.add_parser("evaluate", help="measure a trained model on labelled data")
    esub = evaluate.add_subparsers(dest="evaluate_kind", required=True, metavar="PIPELINE")
    p = esub.add_parser("ich", help="per-label precision/recall/F1/AUC and weighted log loss")
    p.add_argument("--model", required=True, help="model folder (with card.yaml) or the card")
    p.add_argument("--dicom-dir", required=True)
    p.add_argument("--labels", required=True, help="RSNA labels CSV")
    p.add_argument("--out", default="ich-evaluation", help="folder for metrics.json and roc.png")
    p.add_argument("--device")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_evaluate_ich)
    p = esub.add_parser(
        "cxr-findings", help="COCO AP/AR summary, per-class AP50 with 95 % CI, PR curves"
    )
    p.add_argument("--model", required=True, help="model folder (with card.yaml) or the card")
    p.add_argument("--images", required=True, help="folder the COCO file_name entries are in")
    p.add_argument("--coco", required=True, help="COCO detection JSON with the true boxes")
    p.add_argument("--out", default="cxr-evaluation", help="folder for metrics.json and the PNG")
    p.add_argument("--device")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_evaluate_cxr)

    models = sub.add_parser("models", help="model management")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = msub.add_parser(
        "build-demo", help="train the demo models on generated phantoms (not for clinical use)"
    )
    p.add_argument("--models-dir", default=str(Path(__file__).resolve().parent.parent / "models"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if the cards exist")
    p.add_argument(
        "--only", action="append", metavar="NAME", help="build only this demo (repeatable)"
    )
    p.set_defaults(func=cmd_build_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CardError as exc:
        print(f"model card error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
