"""The Matrix Synapse peer for bench/run: Synapse on SQLite, users registered by shared
secret, rate limits raised, a warm-up for its background schema updates, then 1 KiB messages
sent through the client-server API and received through /sync. Prints one JSON object."""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import subprocess
import sys
import threading
import time

SECRET = "bench-shared-secret"


def log(*args):
    print("[synapse]", *args, file=sys.stderr, flush=True)


class Client:
    def __init__(self, port, token=None):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.token = token

    def call(self, method, path, body=None):
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        data = None if body is None else json.dumps(body)
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        payload = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:200]!r}")
        return json.loads(payload or b"{}")


def register(port, user):
    c = Client(port)
    nonce = c.call("GET", "/_synapse/admin/v1/register")["nonce"]
    mac = hmac.new(SECRET.encode(), digestmod=hashlib.sha1)
    mac.update(f"{nonce}\0{user}\0benchpass\0notadmin".encode())
    r = c.call(
        "POST",
        "/_synapse/admin/v1/register",
        {"nonce": nonce, "username": user, "password": "benchpass", "mac": mac.hexdigest()},
    )
    return r["access_token"], r["user_id"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--payload", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    config = os.path.join(args.dir, "homeserver.yaml")
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    if not os.path.exists(config):
        subprocess.run(
            [sys.executable, "-m", "synapse.app.homeserver", "--server-name", "localhost",
             "--config-path", config, "--generate-config", "--report-stats=no",
             "--data-directory", args.dir],
            check=True, stdout=subprocess.DEVNULL, cwd=args.dir,
        )
    with open(config) as f:
        text = f.read()
    lines = []
    skip = False
    for line in text.splitlines():
        if line.startswith("listeners:"):
            skip = True
            continue
        if skip and (line.startswith(" ") or line.startswith("-") or not line.strip()):
            continue
        skip = False
        if line.startswith("registration_shared_secret"):
            continue
        lines.append(line)
    big = {"per_second": 100000, "burst_count": 100000}
    extra = {
        "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http",
                       "tls": False, "x_forwarded": False,
                       "resources": [{"names": ["client"], "compress": False}]}],
        "registration_shared_secret": SECRET,
        "rc_message": big, "rc_registration": big, "rc_login": {"address": big, "account": big,
                                                                 "failed_attempts": big},
        "rc_joins": {"local": big, "remote": big}, "rc_invites": {"per_room": big,
                                                                  "per_user": big},
        "rc_room_creation": big,
    }
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
        for key, value in extra.items():
            f.write(json.dumps({key: value})[1:-1] + "\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "synapse.app.homeserver", "--config-path", config],
        cwd=args.dir, stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(args.dir, "stderr.log"), "w"),
    )
    try:
        for _ in range(600):
            try:
                Client(port).call("GET", "/_matrix/client/versions")
                break
            except Exception:
                time.sleep(0.1)
        else:
            raise RuntimeError("synapse did not start")
        log(f"started; warming up {args.warmup} s (background schema updates)")
        time.sleep(args.warmup)
        pairs = []
        for i in range(args.pairs):
            st, sid = register(port, f"sender{i}")
            rt, rid = register(port, f"receiver{i}")
            sc, rc = Client(port, st), Client(port, rt)
            room = sc.call("POST", "/_matrix/client/v3/createRoom",
                           {"preset": "private_chat", "invite": [rid]})["room_id"]
            rc.call("POST", f"/_matrix/client/v3/join/{room}", {})
            since = rc.call("GET", "/_matrix/client/v3/sync?timeout=0")["next_batch"]
            pairs.append((sc, rc, room, since))
        body = base64.b64encode(os.urandom(args.payload)).decode()
        state = {"phase": "warm", "delivered": 0, "errors": 0}
        lock = threading.Lock()

        def sender(c, room):
            n = 0
            while state["phase"] != "done":
                n += 1
                try:
                    c.call("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/t{n}",
                           {"msgtype": "m.text", "body": body})
                except Exception:
                    with lock:
                        state["errors"] += 1

        def receiver(c, since):
            while state["phase"] != "done":
                try:
                    r = c.call("GET", f"/_matrix/client/v3/sync?timeout=1000&since={since}")
                except Exception:
                    with lock:
                        state["errors"] += 1
                    continue
                since = r["next_batch"]
                got = sum(
                    1 for room in r.get("rooms", {}).get("join", {}).values()
                    for e in room.get("timeline", {}).get("events", [])
                    if e.get("type") == "m.room.message"
                )
                with lock:
                    if state["phase"] == "measure":
                        state["delivered"] += got

        threads = []
        for sc, rc, room, since in pairs:
            threads.append(threading.Thread(target=sender, args=(sc, room), daemon=True))
            threads.append(threading.Thread(target=receiver, args=(rc, since), daemon=True))
        for t in threads:
            t.start()
        time.sleep(5)
        cpu0 = cpu(server.pid)
        with lock:
            state["phase"] = "measure"
        start = time.time()
        time.sleep(args.seconds)
        with lock:
            state["phase"] = "done"
            delivered = state["delivered"]
        elapsed = time.time() - start
        cpu1 = cpu(server.pid)
        rate = delivered / elapsed
        log(f"{rate:.1f} delivered/s, {state['errors']} errors")
        print(json.dumps({
            "delivered_per_s": round(rate, 1),
            "server_cpu_us_per_msg": round((cpu1 - cpu0) / max(delivered, 1), 1),
            "pairs": args.pairs,
            "errors": state["errors"],
            "version": synapse_version(),
        }))
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) * 1e6 / ticks


def synapse_version():
    try:
        import synapse
        return synapse.__version__.split()[0]
    except Exception:
        return "unknown"


if __name__ == "__main__":
    main()
