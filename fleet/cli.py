"""greengate-fleet: the fleet server's command line.

    greengate-fleet [--config FILE] db upgrade | db current
    greengate-fleet [--config FILE] serve [--host H] [--port P]     (development server)
    greengate-fleet [--config FILE] ingest [--no-presence] [--standby] [--worker NAME] [--leave]
                                           [--metrics-port P]  (MQTT ingest worker)
    greengate-fleet [--config FILE] user create|add NAME --role ROLE [--district CODE]
    greengate-fleet [--config FILE] user list | disable|enable|delete|passwd NAME
    greengate-fleet [--config FILE] user set NAME [--role ROLE] [--district CODE|--no-district]
    greengate-fleet [--config FILE] token create USER --name NAME | list [--user U] | revoke ID
    greengate-fleet [--config FILE] bundles refresh [--force] | publish | key [--create]
    greengate-fleet [--config FILE] sealing show | rotate [--no-publish] | purge
    greengate-fleet [--config FILE] valuesets replace DIR         (EU value-set JSON files)
    greengate-fleet [--config FILE] policies import DIR [--name N] (EU rule files)
    greengate-fleet [--config FILE] policies assign NAME --kiosk ID [--kiosk ID ...]
                                    | --location CODE | --district CODE
    greengate-fleet [--config FILE] scans purge [--days N]     (retention)
    greengate-fleet [--config FILE] scans rollup               (the dashboard's hourly counts)
    greengate-fleet [--config FILE] alerts [--once]            (alert dispatcher)
    greengate-fleet [--config FILE] reports weekly [--week YYYY-MM-DD] [--district CODE]
                                    [--ward CODE] [--send] [--force] [--due]  (docs/reports.md)

Production web: gunicorn 'fleet.wsgi:app' (GREENGATE_FLEET_CONFIG names the file).
The config file may also come from GREENGATE_FLEET_CONFIG; every key can be set
by environment (fleet/config.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from greengate.pipes import run_command

from . import config as config_module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="greengate-fleet", description="GreenGate fleet server")
    parser.add_argument("--config", metavar="FILE", default=os.environ.get("GREENGATE_FLEET_CONFIG"),
                        help="the fleet's TOML file (default: $GREENGATE_FLEET_CONFIG, else "
                             "defaults and environment only)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    db = sub.add_parser("db", help="database schema migrations")
    db.add_argument("action", choices=("upgrade", "current"))
    db.set_defaults(handler=_db)

    serve = sub.add_parser("serve", help="run the web server (development; use gunicorn in "
                                         "production)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(handler=_serve)

    ingest = sub.add_parser("ingest", help="run an MQTT ingest worker")
    ingest.add_argument("--no-presence", action="store_true",
                        help="ingest scans only; another worker tracks presence")
    ingest.add_argument("--standby", action="store_true",
                        help="if another worker tracks presence, ingest scans and take over "
                             "presence when it stops or dies (run every host's worker so)")
    ingest.add_argument("--worker", default="1", help="this worker's name in its client id "
                                                      "(fixed: its broker session is kept)")
    ingest.add_argument("--leave", action="store_true",
                        help="drain this worker's broker session, leave the share group and "
                             "end the session, then exit (removing a worker for good)")
    ingest.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve the worker's Prometheus metrics on this port")
    ingest.add_argument("--metrics-addr", default="127.0.0.1", metavar="ADDR",
                        help="address for --metrics-port (default 127.0.0.1)")
    ingest.set_defaults(handler=_lazy("fleet.ingest"))

    from . import accounts_cli
    accounts_cli.add_parsers(sub)  # user … and token … (fleet/accounts_cli.py)

    lists = sub.add_parser("bundles", help="signed lists: re-issue before the kiosks' offline "
                                           "budget runs out (run from a timer), publish, key")
    lists.add_argument("action", choices=("refresh", "publish", "key"),
                       help="refresh: re-issue lists older than [bundles] refresh_hours, then "
                            "publish; publish: republish the current bundles retained (a broker "
                            "lost its store); key: print the public key kiosks pin")
    lists.add_argument("--deployment", action="append", metavar="NAME",
                       help="only this deployment (repeatable; default: all)")
    lists.add_argument("--force", action="store_true", help="refresh: re-issue even fresh lists")
    lists.add_argument("--no-publish", action="store_true", help="refresh: database only")
    lists.add_argument("--create", action="store_true",
                       help="key: create the key if missing (development; production keys come "
                            "from greengate-provision init)")
    lists.add_argument("--timeout", type=float, default=60.0,
                       help="seconds to wait for the broker's acknowledgements")
    lists.set_defaults(handler=_lazy("fleet.bundles"))

    sealing = sub.add_parser("sealing", help="the keys kiosks seal holder identities to "
                                             "(docs/privacy.md): show, rotate, purge")
    sealing.add_argument("action", choices=("show", "rotate", "purge"),
                         help="show: the key pairs held; rotate: a new current key, the old "
                              "one retired (still opens for [privacy] grace_days), a new "
                              "trust bundle carries it to the kiosks; purge: delete keys "
                              "past their grace period")
    sealing.add_argument("--no-publish", action="store_true",
                         help="rotate: database only; kiosks get the key at the next "
                              "publication or by HTTP")
    sealing.set_defaults(handler=_lazy("fleet.sealing_keys"))

    valuesets = sub.add_parser("valuesets", help="the EU value sets kiosks verify with: "
                                                 "replace them from a folder of EU JSON files")
    valuesets.add_argument("action", choices=("replace",))
    valuesets.add_argument("folder", metavar="DIR",
                           help="EU value-set files (*.json, each with valueSetId and "
                                "valueSetValues); they replace the value sets of the same id")
    _list_change_options(valuesets)
    valuesets.set_defaults(handler=_lazy("fleet.value_sets"))

    policies = sub.add_parser("policies", help="checkpoint policies: import an EU rule set, "
                                               "assign a policy to kiosks")
    policies.add_argument("action", choices=("import", "assign"),
                          help="import DIR: a folder of EU-format rule files (one rule per "
                               "file) becomes policy --name; assign NAME: the kiosks named by "
                               "--kiosk, --location or --district apply policy NAME")
    policies.add_argument("target", metavar="DIR|NAME")
    policies.add_argument("--name", help="import: the policy's name (default: the folder's)")
    policies.add_argument("--title", help="import: the policy's title")
    policies.add_argument("--timezone", default="UTC",
                          help="import: the policy's time zone (default UTC)")
    policies.add_argument("--kiosk", action="append", default=[], metavar="ID",
                          help="assign: this kiosk (repeatable)")
    policies.add_argument("--location", metavar="CODE",
                          help="assign: every kiosk (not retired) of the deployment there")
    policies.add_argument("--district", metavar="CODE",
                          help="assign: every kiosk (not retired) of the deployment there")
    _list_change_options(policies)
    policies.set_defaults(handler=_lazy("fleet.policies"))

    scans = sub.add_parser("scans", help="purge: delete scans older than [fleet] "
                                         "retention_days; rollup: count the closed hours for "
                                         "the dashboard (both hourly, from a timer)")
    scans.add_argument("action", choices=("purge", "rollup"))
    scans.add_argument("--days", type=float, metavar="N",
                       help="purge: keep N days instead of [fleet] retention_days")
    scans.set_defaults(handler=lambda config, args: _lazy(
        "fleet.scan_hours" if args.action == "rollup" else "fleet.retention")(config, args))

    alerts = sub.add_parser("alerts", help="run the alert dispatcher: webhooks and e-mail when "
                                           "kiosks go offline (docs/dashboard.md#alerts)")
    alerts.add_argument("--once", action="store_true",
                        help="one round (decide, send, wait for the sends), then exit")
    alerts.set_defaults(handler=_lazy("fleet.alerts"))

    reports = sub.add_parser("reports", help="weekly compliance reports per district and ward "
                                             "(docs/reports.md)")
    reports.add_argument("action", choices=("weekly",))
    reports.add_argument("--week", metavar="YYYY-MM-DD",
                         help="a day of the week (Monday-Sunday, UTC+7); default: last week")
    reports.add_argument("--district", metavar="CODE", help="only this district")
    reports.add_argument("--ward", metavar="CODE", help="only this ward")
    reports.add_argument("--language", choices=("vi", "en"),
                         help="default: [reports] language")
    reports.add_argument("--force", action="store_true", help="make again reports already made")
    reports.add_argument("--send", action="store_true",
                         help="e-mail them to the scope's officers ([alerts] smtp_host)")
    reports.add_argument("--due", action="store_true",
                         help="the upkeep: last week's missing reports, made and sent once")
    reports.set_defaults(handler=_lazy("fleet.reports"))

    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        config = config_module.load(args.config)
    except config_module.ConfigError as exc:
        print(f"greengate-fleet: {exc}", file=sys.stderr)
        return 2
    return run_command(lambda: args.handler(config, args))


def _list_change_options(parser) -> None:
    parser.add_argument("--deployment", metavar="NAME",
                        help="the deployment (default: the fleet's only one)")
    parser.add_argument("--reason", help="why (kept in the audit log)")
    parser.add_argument("--no-publish", action="store_true",
                        help="database only; kiosks get it at the next publication or by HTTP")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the broker's acknowledgements")


def _lazy(module: str):
    def handler(config, args) -> int:
        return importlib.import_module(module).run(config, args)
    return handler


def _engine(config):
    from .db import make_engine
    return make_engine(config.database_url)


def _db(config, args) -> int:
    from . import migrate
    engine = _engine(config)
    if args.action == "upgrade":
        migrate.upgrade(engine)
    current = migrate.current(engine)
    print(f"database {engine.url.render_as_string(hide_password=True)}: schema {current} "
          f"(latest {migrate.head()})")
    return 0 if current == migrate.head() else 1


def _serve(config, args) -> int:
    from .app import create_app
    from .publisher import for_app
    publisher = for_app(config)  # list changes go out on MQTT; None if [mqtt] host is empty
    try:
        create_app(config, publisher=publisher).run(host=args.host, port=args.port)
    finally:
        if publisher is not None:
            publisher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
