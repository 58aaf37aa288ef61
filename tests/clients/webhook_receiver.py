"""A webhook receiver that checks every delivery with the `standardwebhooks` package from PyPI
(the specification's reference verifier, not our code).

Usage: webhook_receiver.py <port> <log file> <secret>
Environment: FAIL_FIRST=n answers the first n deliveries 500; HANG_FIRST=1 never answers the
first one (a delivery the companion is killed in the middle of).

Each request appends one JSON line to the log: {"webhook_id", "verified", "error", "payload",
"answer", "tampered_refused"} where tampered_refused says whether the same verifier refused the
delivery with one byte of its body changed and with its signature changed. A delivery that
verifies is answered 204, one that does not 400.
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

port, log_path, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3]
verifier = Webhook(secret)
lock = threading.Lock()
seen = {"count": 0}
fail_first = int(os.environ.get("FAIL_FIRST", "0"))
hang_first = os.environ.get("HANG_FIRST") == "1"


def refused(body, headers):
    try:
        verifier.verify(body, headers)
        return False
    except WebhookVerificationError:
        return True


class Receiver(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k: v for k, v in self.headers.items()}
        with lock:
            seen["count"] += 1
            n = seen["count"]
        entry = {"webhook_id": headers.get("webhook-id"), "verified": False, "error": None, "payload": None}
        try:
            entry["payload"] = verifier.verify(body, headers)
            entry["verified"] = True
        except WebhookVerificationError as e:
            entry["error"] = str(e)
        flipped = bytearray(body)
        if flipped:
            flipped[-2] ^= 1
        forged = dict(headers)
        forged["webhook-signature"] = "v1," + "A" * 43 + "="
        entry["tampered_refused"] = refused(bytes(flipped), headers) and refused(body, forged)
        if hang_first and n == 1:
            entry["answer"] = "hang"
        elif n <= fail_first:
            entry["answer"] = 500
        else:
            entry["answer"] = 204 if entry["verified"] else 400
        with lock, open(log_path, "a") as log:
            log.write(json.dumps(entry) + "\n")
        if entry["answer"] == "hang":
            time.sleep(3600)
            return
        self.send_response(entry["answer"])
        self.send_header("content-length", "0")
        self.end_headers()


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()
