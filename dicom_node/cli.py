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
from pipelines.commands import CommandGroups, add_pipeline_commands

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


def code_paths() -> list[str]:
    """The demo builds' CPU code paths (:mod:`pipelines.common.codepath`)."""
    from pipelines.common.codepath import CODE_PATHS

    return list(CODE_PATHS)


def _build_demo_in_background(args: argparse.Namespace, argv: list[str]) -> int:
    """Start ``models build-demo`` (without ``--background``) in a process of its own.

    The models it will build are marked as building (with that process's id)
    before this returns, so a node started right after keeps their jobs
    waiting instead of failing them.
    """
    import subprocess

    from pipelines.card import CARD_FILE, mark_building
    from pipelines.study import demo_models

    names = args.only or list(demo_models())
    missing = [
        n for n in names if args.force or not (Path(args.models_dir) / n / CARD_FILE).is_file()
    ]
    if not missing:
        print("demo models ready: nothing to build")
        return EXIT_OK
    log_path = Path(args.background)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", *argv],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    for name in missing:
        mark_building(Path(args.models_dir) / name / CARD_FILE, child.pid)
    print(
        f"building {len(missing)} demo model(s) in the background (process {child.pid}, "
        f"log {log_path}): {', '.join(missing)}"
    )
    return EXIT_OK


def cmd_build_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import build_demo, default_jobs

    if args.background:
        argv = [
            "models",
            "build-demo",
            "--models-dir",
            str(args.models_dir),
            "--seed",
            str(args.seed),
        ]
        argv += ["--force"] * args.force + [a for n in args.only or () for a in ("--only", n)]
        argv += ["--jobs", str(args.jobs)] if args.jobs else []
        argv += ["--code-path", args.code_path] if args.code_path else []
        return _build_demo_in_background(args, argv)
    setup_logging("INFO")
    try:
        cards = build_demo(
            Path(args.models_dir),
            seed=args.seed,
            force=args.force,
            only=args.only,
            jobs=args.jobs or default_jobs(),
            code_path=args.code_path,
        )
    except ValueError as exc:  # an unknown demo, or a code path this CPU cannot take
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
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

    dataset = sub.add_parser("dataset", help="prepare training data in a study's format")
    train = sub.add_parser("train", help="train a pipeline's model from data in its study format")
    evaluate = sub.add_parser("evaluate", help="measure a trained model on labelled data")
    # the pipeline packages add their own synth kinds, dataset tools, trainers and evaluators
    add_pipeline_commands(
        CommandGroups(
            synth=ssub,
            dataset=dataset.add_subparsers(dest="dataset_command", required=True, metavar="ACTION"),
            train=train.add_subparsers(dest="train_kind", required=True, metavar="PIPELINE"),
            evaluate=evaluate.add_subparsers(
                dest="evaluate_kind", required=True, metavar="PIPELINE"
            ),
        )
    )

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
    p.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="builds in parallel, one thread each (default: one per CPU core); "
        "the weights do not depend on it",
    )
    p.add_argument(
        "--code-path",
        choices=code_paths(),
        help="CPU code path to train under, as another machine would (default: "
        "$DICOM_NODE_CODE_PATH, else native); see models/README.md",
    )
    p.add_argument(
        "--background",
        metavar="LOG",
        help="return at once and build in a background process that writes to LOG; until a "
        "model is built, the node keeps its jobs waiting (shown by 'dicom-node status')",
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
