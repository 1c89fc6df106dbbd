#!/usr/bin/env python3
"""A syslog drain receiver to try drains with: prints each message a node sends it.

    python3 drain-receiver.py 5140    # then: a drain to syslog://127.0.0.1:5140
"""
import socketserver
import sys


class Printer(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            count = b""
            while (byte := self.rfile.read(1)) not in (b" ", b""):
                count += byte
            if not byte:
                return
            print(self.rfile.read(int(count)).decode("utf-8", "replace").rstrip("\n"), flush=True)


socketserver.ThreadingTCPServer(("127.0.0.1", int(sys.argv[1])), Printer).serve_forever()
