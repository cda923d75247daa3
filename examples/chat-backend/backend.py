#!/usr/bin/env python3
"""A small chat backend for the gateway's hooks (Python standard library only).

It answers the gateway's signed hook requests (POST /connect, /subscribe, /publish, /rpc) and
calls the gateway's server API (POST /api/publish on the admin port) for the `announce` RPC.
See README.md next to this file and docs/backend.md.

    python3 backend.py --port 8700 --secret-file hook.secret --admin-url http://127.0.0.1:9090

The rules of this example chat:
- connect: the user is the token's `sub`, else the `user` query parameter or `session`
  cookie (stand-ins for the application's own login); `banned` is refused; everyone may read
  and write `chat.*` and `cursor.*` and read `user.<name>`, to which they are subscribed by
  the server. A `name` query parameter becomes the session's presence `info`
  (`{"name": ...}`), which other members see in presence lists and join/leave events.
- subscribe: rooms whose name contains `secret` are refused; resubscribe (a resume's restored
  subscriptions, in one call) refuses the same ones.
- publish: a message containing "spam" is refused; others are stored as
  `{"text": ..., "by": user}`, so what history keeps is what the backend approved.
- rpc: `echo` (returns data), `whoami`, `announce` (publishes data.text on chat.lobby through
  the server API), `fail` (an error), `sleep` (waits data.seconds first).

GET /stats (unsigned) returns the calls per hook; POST /control {"delay_ms": N} (unsigned,
loopback only) makes every hook answer late, for trying out timeouts and the breaker.
"""

import argparse
import hashlib
import hmac
import json
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {"calls": {}, "delay_ms": 0, "grant_all": False}
LOCK = threading.Lock()


def count(hook):
    with LOCK:
        STATE["calls"][hook] = STATE["calls"].get(hook, 0) + 1


def connect(req):
    claims = req.get("token_claims") or {}
    query = urllib.parse.parse_qs(req.get("query", ""))
    cookies = {}
    for part in req.get("headers", {}).get("cookie", "").split(";"):
        if "=" in part:
            name, value = part.strip().split("=", 1)
            cookies[name] = value
    user = claims.get("sub") or (query.get("user") or [None])[0] or cookies.get("session")
    if not user:
        return {"error": {"code": "unauthorized", "message": "log in first"}, "reconnect": False}
    if user == "banned":
        return {"error": {"code": "banned", "message": "this user is banned"}, "reconnect": False}
    if STATE["grant_all"]:
        answer = {"user": user, "grants": {"sub": ["*"], "pub": ["*"]}}
    else:
        answer = {
            "user": user,
            "grants": {"sub": ["chat.*", "cursor.*", "user." + user], "pub": ["chat.*", "cursor.*"]},
            "subscribe": ["user." + user],
        }
    name = (query.get("name") or [None])[0]
    if name:
        answer["info"] = {"name": name}
    return answer


def subscribe(req):
    if "secret" in req["topic"]:
        return {"error": {"code": "forbidden", "message": "this room is private"}}
    return {}


def resubscribe(req):
    return {"refuse": [t for t in req["topics"] if "secret" in t]}


def publish(req):
    data = req["data"]
    text = data.get("text") if isinstance(data, dict) else data
    if isinstance(text, str) and "spam" in text.lower():
        return {"error": {"code": "forbidden", "message": "no spam, please"}}
    return {"data": {"text": text, "by": req.get("user")}}


def rpc(req, admin_url):
    method, data = req["method"], req.get("data")
    if method == "echo":
        return {"data": data}
    if method == "whoami":
        return {"data": {"user": req.get("user"), "session": req["session"]}}
    if method == "fail":
        return {"error": {"code": "bad_request", "message": "this method always fails"}}
    if method == "sleep":
        time.sleep(float((data or {}).get("seconds", 1)))
        return {"data": "awake"}
    if method == "announce" and admin_url:
        body = json.dumps({"topic": "chat.lobby", "data": {"text": (data or {}).get("text"), "by": "system"}})
        request = urllib.request.Request(
            admin_url.rstrip("/") + "/api/publish",
            data=body.encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return {"data": json.loads(response.read())}
    return {"error": {"code": "bad_request", "message": "unknown method " + method}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the gateway reuses connections
    secret = b""
    admin_url = None

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                return self.answer(200, {"calls": dict(STATE["calls"])})
        self.answer(404, {"error": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/control":
            with LOCK:
                STATE.update(json.loads(body or b"{}"))
            return self.answer(200, {"ok": True})
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, self.headers.get("x-gateway-signature", "")):
            return self.answer(401, {"error": "bad signature"})
        hook = self.path.strip("/")
        handlers = {"connect": connect, "subscribe": subscribe, "resubscribe": resubscribe,
                    "publish": publish,
                    "rpc": lambda req: rpc(req, self.admin_url)}
        if hook not in handlers:
            return self.answer(404, {"error": "no such hook"})
        count(hook)
        delay = STATE["delay_ms"]
        if delay:
            time.sleep(delay / 1000)
        self.answer(200, handlers[hook](json.loads(body)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8700, help="0 picks a free port")
    parser.add_argument("--secret-file", required=True, help="the gateway's --hook-secret-file")
    parser.add_argument("--admin-url", help="the gateway's admin port, for the server API")
    parser.add_argument("--grant-all", action="store_true",
                        help="admit every user to every topic, no server-side subscription (load tests)")
    args = parser.parse_args()
    STATE["grant_all"] = args.grant_all
    with open(args.secret_file, "rb") as f:
        secret = f.read()
    Handler.secret = secret[:-1] if secret.endswith(b"\n") else secret
    Handler.admin_url = args.admin_url
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
