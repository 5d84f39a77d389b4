"""moto's S3 server on a listening socket the test process made and handed down (its fd,
then its port, as arguments): no port is found free, closed and bound again later, by when
another process (another test run, an outgoing connection's ephemeral port) may hold it."""
from __future__ import annotations

import os
import signal
import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


def main() -> None:
    fd, port = int(sys.argv[1]), int(sys.argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))  # as moto.server sets it (URLs moto hands out)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # as moto.server runs it
    make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler, fd=fd).serve_forever()


if __name__ == "__main__":
    main()
