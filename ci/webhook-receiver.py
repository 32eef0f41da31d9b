#!/usr/bin/env python3
"""A local webhook receiver: accepts POSTed JSON (Slack-compatible notifications of
lazyrec-release, Alertmanager webhooks) and appends one line per request to a file.
  ci/webhook-receiver.py PORT FILE
"""
import http.server
import json
import sys

PORT, OUT = int(sys.argv[1]), sys.argv[2]


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {"raw": body.decode("utf-8", "replace")}
        with open(OUT, "a", encoding="utf-8") as f:
            f.write(json.dumps({"path": self.path, "body": doc}) + "\n")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Receiver).serve_forever()
