"""The lab's LAN client.

count URL N [SECONDS]  N sequential HTTP requests (each a new TCP connection); prints
                       JSON {"seen": {address: count}, "failures": k, "ports": p}, p being
                       the distinct local ports used: a reused port is the same 5-tuple,
                       hence the same flow.
stream URL             one long download; prints JSON {"bytes": n, "seconds": s}.
"""
import json
import socket
import sys
import time
import urllib.parse


def get(url, timeout=5.0, ports=None):
    parts = urllib.parse.urlparse(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as conn:
        if ports is not None:
            ports.add(conn.getsockname()[1])
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: {parts.hostname}\r\n\r\n".encode())
        data = bytearray()
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise OSError(f"bad response {head[:40]!r}")
    return body


def count(url, n, seconds):
    seen, failures, ports = {}, 0, set()
    deadline = time.monotonic() + seconds
    for _ in range(n):
        if time.monotonic() > deadline:
            failures += 1
            continue
        try:
            address = get(url, ports=ports).decode().strip()
            seen[address] = seen.get(address, 0) + 1
        except OSError:
            failures += 1
    print(json.dumps({"seen": seen, "failures": failures, "ports": len(ports)}))


def stream(url):
    start = time.monotonic()
    body = get(url, timeout=30.0)
    print(json.dumps({"bytes": len(body), "seconds": time.monotonic() - start}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "count":
        count(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 300)
    elif mode == "stream":
        stream(sys.argv[2])
    else:
        sys.exit(f"unknown mode {mode}")
