"""``platebridge-pod`` command line.

    platebridge-pod run --config config.yaml
    python -m pod config.yaml            (the seed's form)
    platebridge-pod check --config config.yaml [--mqtt-wait N]
    platebridge-pod config-schema        (JSON Schema of config.yaml)
    platebridge-pod outbox list|retry|drop --config config.yaml [...]

Exit codes: 0 clean shutdown, 2 bad config (message names the key path),
1 runtime failure. ``check``: 0 all passed (warnings allowed), 1 a check
failed, 2 bad config (see :mod:`pod.check`). ``outbox``: see :mod:`pod.outboxctl`.
SIGHUP makes a running agent reload its config file (:meth:`pod.agent.PodAgent.reload_config`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pod.config import load_config
from pod.errors import ConfigError, PodError
from protocol.logfmt import setup_logging

log = logging.getLogger("platebridge.pod")
_COMMANDS = ("run", "check", "config-schema", "outbox", "-h", "--help")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="platebridge-pod", description="PlateBridge gate pod agent")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", "-c", required=True, help="path to config.yaml")
    check = sub.add_parser("check", help="check config, portal, MQTT, cameras, tailnet, dirs and secret; "
                                         "one PASS/WARN/FAIL line each")
    check.add_argument("--config", "-c", required=True, help="path to config.yaml")
    check.add_argument("--mqtt-wait", type=float, default=0.0, metavar="N",
                       help="also wait up to N seconds for messages on the Frigate topics (default 0: skip)")
    sub.add_parser("config-schema", help="print the JSON Schema of config.yaml")
    from pod.outboxctl import add_parser

    add_parser(sub)
    return p


def config_schema_text() -> str:
    """JSON Schema of ``config.yaml`` (msgspec's schema of :class:`PodConfig`; unknown keys
    are refused, as :func:`pod.config.parse_config` does)."""
    import msgspec

    from pod.config import PodConfig
    from protocol.schema import JSON_SCHEMA_DIALECT, dumps

    doc = {"$schema": JSON_SCHEMA_DIALECT, **msgspec.json.schema(PodConfig)}
    doc["$defs"]["PodConfig"]["additionalProperties"] = False
    return dumps(doc)


async def _run(cfg, path: str) -> None:
    from pod.agent import PodAgent

    await PodAgent(cfg, config_path=path).run()


def run_with_config(path: str) -> int:
    """Load ``path`` and run the agent on uvloop. Returns the process exit code."""
    try:
        cfg, warnings = load_config(path)
    except ConfigError as exc:
        print(f"platebridge-pod: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level)
    for w in warnings:
        log.warning("config: %s", w)
    try:
        import uvloop

        uvloop.run(_run(cfg, path))
    except ConfigError as exc:
        log.error("config error: %s", exc)
        return 2
    except PodError as exc:
        log.error("%s", exc)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``platebridge-pod``; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in _COMMANDS and not argv[0].startswith("-"):
        return run_with_config(argv[0])  # seed form: python -m pod config.yaml
    args = _parser().parse_args(argv)
    if args.command == "check":
        from pod.check import main as check_main

        return check_main(args.config, mqtt_wait=max(0.0, args.mqtt_wait))
    if args.command == "config-schema":
        sys.stdout.write(config_schema_text())
        return 0
    if args.command == "outbox":
        from pod.outboxctl import main as outbox_main

        setup_logging("WARNING")
        return outbox_main(args)
    return run_with_config(args.config)


if __name__ == "__main__":
    sys.exit(main())
