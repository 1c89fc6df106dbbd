"""Log observers for twistd: `twistd --logger logplex.logs.json -n logplex` writes JSON lines.

By default twistd's own observer is used (it honours -n and --logfile); every
logplex event reads `event_name key=value …` there. With this one each event
is a JSON object on one line of standard output, for a collector that parses
JSON.
"""

from __future__ import annotations

import sys

from twisted.logger import jsonFileLogObserver


def json():
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
