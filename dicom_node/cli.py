"""The ``dicom-node`` command.

Exit codes: 0 success; 1 the operation failed (peer refused, nothing to do
where something was expected); 2 bad usage or an invalid configuration.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node import __version__
from dicom_node.config import Config, ConfigError, Destination, load_config
from dicom_node.logs import setup_logging
from pipelines.card import CardError
from pipelines.registry import CommandGroups, add_commands

if TYPE_CHECKING:
    import ssl

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

    tls: list[tuple[str, Callable[[], ssl.SSLContext]]] = []
    if config.node.tls is not None:
        tls.append(("node.tls", functools.partial(server_context, config.node.tls)))
    for name, dest in config.destinations.items():
        if dest.tls is not None:
            tls.append((f"destinations.{name}.tls", functools.partial(client_context, dest.tls)))
    for where, make in tls:
        try:
            make()
            print(f"{where}: certificates load")
        except TLSError as exc:
            print(f"{where}: {exc}", file=sys.stderr)
            problems += 1
    problems += _check_engine(config)
    print(
        f"{args.config}: valid ({len(config.routes)} routes, {len(config.destinations)} destinations, "
        f"{len(config.node.peers)} peers)"
    )
    return EXIT_FAILED if problems else EXIT_OK


def _check_engine(config: Config) -> int:
    """Join the Ray cluster (``engine.kind: ray``) and check every pipeline has a node to run on."""
    if config.engine.kind != "ray":
        print("engine: local (models run in the node's process)")
        return 0
    from dicom_node.jobs.engine import EngineFailure
    from dicom_node.jobs.ray_engine import RayEngine

    engine = RayEngine(config.engine, lambda: config)
    try:
        engine.connect()
        nodes = [n for n in engine.nodes() if n.get("Alive")]
    except EngineFailure as exc:
        print(str(exc), file=sys.stderr)
        return 1
    problems = 0
    print(f"engine: Ray cluster at {config.engine.address}, {len(nodes)} live node(s)")
    for name, why in engine.unavailable(config.pipelines).items():
        print(f"pipelines.{name}.ray: {why}", file=sys.stderr)
        problems += 1
    engine.close()
    return problems


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


def cmd_users(args: argparse.Namespace) -> int:
    """Console accounts: ``add``, ``list``, ``passwd``, ``remove`` (recorded as the command line)."""
    from dicom_node.console import accounts
    from dicom_node.db import make_engine, migrate, session_factory, transaction

    config = load_config(args.config)
    engine = make_engine(config.storage.database_url)
    migrate(engine)
    sessions = session_factory(engine)
    try:
        with transaction(sessions) as session:
            if args.users_command == "list":
                for name, role in accounts.list_users(session):
                    print(f"{name}\t{role.value}")
            elif args.users_command == "add":
                accounts.add_user(session, args.name, args.role, _new_password(args), actor=None)
                print(f"user {args.name} added as {args.role}")
            elif args.users_command == "passwd":
                accounts.set_password(session, args.name, _new_password(args), actor=None)
                print(f"password of {args.name} changed; their sessions ended")
            else:
                accounts.remove_user(session, args.name, actor=None)
                print(f"user {args.name} removed")
    except accounts.AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        engine.dispose()
    return EXIT_OK


def _new_password(args: argparse.Namespace) -> str:
    """The password from standard input (``--password-stdin``, one line) or asked twice."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    import getpass

    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        from dicom_node.console.accounts import AccountError

        raise AccountError("the two passwords differ")
    return first


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

    users = sub.add_parser("users", help="web console accounts")
    usub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    with_config(usub.add_parser("list", help="every account and its role"))
    for action, text in (("add", "create an account"), ("passwd", "change a password")):
        p = with_config(usub.add_parser(action, help=text))
        p.add_argument("name")
        if action == "add":
            p.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
        p.add_argument(
            "--password-stdin", action="store_true", help="read the password from standard input"
        )
    with_config(usub.add_parser("remove", help="delete an account")).add_argument("name")
    users.set_defaults(func=cmd_users)

    synth = sub.add_parser(
        "synth", help="generate synthetic phantoms as real DICOM (not patient data)"
    )
    ssub = synth.add_subparsers(dest="synth_kind", required=True, metavar="KIND")

    dataset = sub.add_parser("dataset", help="prepare training data in a study's format")
    train = sub.add_parser("train", help="train a pipeline's model from data in its study format")
    evaluate = sub.add_parser("evaluate", help="measure a trained model on labelled data")
    # the studies' commands log through the node's logging (main() sets it up at this level)
    for group, level in (
        (synth, "INFO"),
        (dataset, "INFO"),
        (train, "INFO"),
        (evaluate, "WARNING"),
    ):
        group.set_defaults(log_level=level)
    models = sub.add_parser("models", help="model management")
    # the pipeline packages add their own synth kinds, dataset tools, trainers and evaluators,
    # and the demo builder its models command
    model_actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    add_commands(
        CommandGroups(
            models=model_actions,
            synth=ssub,
            dataset=dataset.add_subparsers(dest="dataset_command", required=True, metavar="ACTION"),
            train=train.add_subparsers(dest="train_kind", required=True, metavar="PIPELINE"),
            evaluate=evaluate.add_subparsers(
                dest="evaluate_kind", required=True, metavar="PIPELINE"
            ),
        )
    )
    p = model_actions.add_parser(
        "table", help="the cards' performance as Markdown tables (what the README shows)"
    )
    p.add_argument("cards", nargs="+", type=Path, help="card.yaml files or model folders")
    p.add_argument(
        "--split",
        action="append",
        choices=["held_out_test", "cross_validation", "validation"],
        help="splits to show (repeatable; default held_out_test)",
    )
    p.add_argument(
        "--into",
        type=Path,
        metavar="MARKDOWN",
        help="rewrite the generated block of this Markdown file (between its BEGIN and END "
        "models table lines) instead of printing",
    )
    p.set_defaults(func=cmd_models_table)

    return parser


def cmd_models_table(args: argparse.Namespace) -> int:
    """``dicom-node models table``: Markdown tables generated from the cards."""
    from dicom_node.cardtable import cards_tables, replace_block
    from pipelines.card import CARD_FILE, load_card

    try:
        cards = [
            load_card(path / CARD_FILE if path.is_dir() else path, verify_weights=False)
            for path in args.cards
        ]
    except CardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tables = cards_tables(cards, splits=args.split or ["held_out_test"])
    if args.into is None:
        print(tables, end="")
        return 0
    try:
        updated = replace_block(args.into.read_text(encoding="utf-8"), tables)
    except (OSError, ValueError) as exc:
        print(f"error: {args.into}: {exc}", file=sys.stderr)
        return 2
    args.into.write_text(updated, encoding="utf-8")
    print(f"{args.into}: {len(cards)} card table(s) written")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "log_level", None):
        setup_logging(args.log_level)
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
