#!/usr/bin/env python3
"""Sends an identify and an 'Order Completed' track through Segment's real Python library (segment-analytics-python).

    python3 tests/sdk/python_sender.py --host http://127.0.0.1:RPORT --key WRITEKEY [--gzip] [--timeout-s 30]

The library batches both calls into POST {host}/v1/batch (Basic auth with the write key, JSON body
{"batch": [...], "sentAt", "writeKey"}, gzip-compressed with Content-Encoding: gzip when --gzip). It runs with its
own defaults (background consumer thread, upload_interval 0.5 s, max_retries 10); this script then flushes and shuts
it down. It prints one JSON line: {"sdk","version","host","gzip","messages":[...],"responses":[...],"errors":[...],
"ok"} and exits 0 only if the library reported no error through its on_error callback and every HTTP answer it got
was a 2xx (a retried failure shows in "responses"). It exits 1 otherwise, or when --timeout-s passes first.
"""

import argparse
import json
import os
import sys
import threading

try:
    import segment.analytics as analytics
    from segment.analytics import request as segment_request
    from segment.analytics.version import VERSION
except ImportError as e:  # pragma: no cover - a setup problem, said plainly
    sys.stderr.write(
        "python_sender.py: segment-analytics-python is not installed "
        "(pip install -r tests/sdk/requirements.txt): %s\n" % e
    )
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", required=True, help="collector base URL, e.g. http://127.0.0.1:8787")
    parser.add_argument("--key", required=True, help="write key")
    parser.add_argument("--gzip", action="store_true", help="gzip request bodies (Content-Encoding: gzip)")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="give up (exit 1) after this many seconds")
    args = parser.parse_args()

    errors = []
    responses = []
    messages = []
    lock = threading.Lock()
    summary = {
        "sdk": "segment-analytics-python",
        "version": VERSION,
        "host": args.host,
        "gzip": args.gzip,
    }

    def emit(ok, error=None):
        out = dict(summary, messages=messages, responses=responses, errors=errors, ok=ok)
        if error:
            out["error"] = error
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()

    def on_error(error, batch):
        with lock:
            errors.append(
                {
                    "error": str(error),
                    "status": getattr(error, "status", None),
                    "message_ids": [m.get("messageId") for m in batch],
                }
            )

    # Watch every HTTP answer the library gets (its module-level requests session), without changing what it sends.
    def on_response(response, *_args, **_kwargs):
        with lock:
            responses.append(
                {
                    "method": response.request.method,
                    "url": response.request.url,
                    "status": response.status_code,
                    "request_headers": dict(response.request.headers),
                    "request_body_bytes": len(response.request.body or b""),
                }
            )

    segment_request._session.hooks["response"].append(on_response)

    def watchdog():
        emit(False, "timeout: the library did not finish within %.0f s" % args.timeout_s)
        sys.stderr.write("python_sender.py: FAILED: timeout after %.0f s\n" % args.timeout_s)
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(args.timeout_s, watchdog)
    timer.daemon = True
    timer.start()

    analytics.write_key = args.key
    analytics.host = args.host.rstrip("/")
    analytics.gzip = args.gzip
    analytics.on_error = on_error
    analytics.debug = False

    consent = {"consent": {"marketing": True}}
    ok1, identify = analytics.identify(
        "user-py-1",
        {"email": " Jane.Doe@Example.com ", "phone": "+44 7700 900123"},
        context=consent,
    )
    ok2, track = analytics.track(
        "user-py-1",
        "Order Completed",
        {"order_id": "ORD-PY-1", "revenue": 42.5, "currency": "EUR"},
        # A server tracking a web order says on which page it happened: OpenAI's web events need source_url.
        context={"consent": {"marketing": True}, "page": {"url": "https://shop.example.com/thanks?order=ORD-PY-1"}},
    )
    messages.extend(
        [
            {"type": identify["type"], "messageId": identify["messageId"], "queued": ok1},
            {"type": track["type"], "messageId": track["messageId"], "queued": ok2},
        ]
    )
    analytics.flush()
    analytics.shutdown()
    timer.cancel()

    bad = [r for r in responses if not 200 <= r["status"] < 300]
    problems = []
    if not (ok1 and ok2):
        problems.append("the library did not queue every message")
    if errors:
        problems.append("on_error: " + "; ".join(e["error"] for e in errors))
    if bad:
        problems.append("non-2xx answers: " + ", ".join("%s -> %s" % (r["url"], r["status"]) for r in bad))
    if not responses:
        problems.append("no request reached the collector")
    if problems:
        emit(False, "; ".join(problems))
        sys.stderr.write("python_sender.py: FAILED: %s\n" % "; ".join(problems))
        return 1
    emit(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
