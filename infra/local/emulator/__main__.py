"""``python -m infra.local.emulator --host H --port P``: the emulator process (see the package docstring)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

import moto

from infra.local import emulator
from infra.local.emulator.firehose import PUMP_INTERVAL_S, FirehosePump
from infra.local.emulator.lambda_invoke import _RUNTIME
from infra.local.emulator.patches import install
from infra.local.emulator.server import EmulatorServer

log = logging.getLogger("radstream.emulator")


def main() -> None:
    parser = argparse.ArgumentParser(description=emulator.__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    install()
    server = EmulatorServer(args.host, args.port)
    server.start()
    endpoint = f"http://{args.host}:{args.port}"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    pump = FirehosePump(args.region)
    log.info("AWS emulator (moto %s + local gaps) on %s", moto.__version__, endpoint)
    while not stop.wait(PUMP_INTERVAL_S):
        try:
            pump.pump_once()
        except Exception as exc:
            log.warning("firehose pump: %s", exc)
    server.stop()
    _RUNTIME.close()


if __name__ == "__main__":
    main()
