"""The lab's LAN client.

count URL N [SECONDS [SOURCE]]
                       N sequential HTTP requests (each a new TCP connection, from
                       SOURCE when given); prints
                       JSON {"seen": {address: count}, "failures": k, "ports": p}, p being
                       the distinct local ports used: a reused port is the same 5-tuple,
                       hence the same flow.
stream URL             one long download; prints JSON {"bytes": n, "seconds": s}.
attempts URL SECONDS INTERVAL TIMEOUT
                       a new connection every INTERVAL s, each in its own thread and
                       given TIMEOUT s; prints a JSON list of {"start": wall-clock s,
                       "ok": bool, "address": uplink address or null}, by start.
dns SERVER NAME N     N DNS queries (type A) for NAME, one at a time; prints JSON
                       {"answers": {address: count}, "failures": k}.
udp HOST PORT SECONDS INTERVAL
                       one UDP socket (one flow) sending a numbered request every
                       INTERVAL s to the echo server; prints {"first": address} as soon
                       as the first answer comes, then {"sent", "answered", "lost",
                       "by_address", "last_address"}.
sources FIRST N URL [URL ...]
                       from each of N source addresses starting at FIRST, one
                       request to each URL in turn; prints {"seen": {source: [the
                       address the server saw, per URL]}, "failures": k}.
sessions HOST PORT TCP UDP SECONDS INTERVAL
                       TCP long-lived connections to the line echo (PORT) and UDP
                       flows to the datagram echo (PORT-1), all open at once; prints
                       {"open": n} when all are open, then for SECONDS sends one
                       numbered message per session every INTERVAL s and prints
                       {"tcp": [...], "udp": [...]}, per session {"addresses": the
                       sources the server saw, "sent", "answered", "error": why a TCP
                       session broke, or null}.
"""
import collections
import json
import select
import socket
import struct
import sys
import threading
import time
import urllib.parse


def get(url, timeout=5.0, ports=None, source=None):
    parts = urllib.parse.urlparse(url)
    bind = (source, 0) if source else None
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout,
                                  source_address=bind) as conn:
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


def count(url, n, seconds, source=None):
    seen, failures, ports = {}, 0, set()
    deadline = time.monotonic() + seconds
    for _ in range(n):
        if time.monotonic() > deadline:
            failures += 1
            continue
        try:
            address = get(url, ports=ports, source=source).decode().strip()
            seen[address] = seen.get(address, 0) + 1
        except OSError:
            failures += 1
    print(json.dumps({"seen": seen, "failures": failures, "ports": len(ports)}))


def stream(url):
    start = time.monotonic()
    body = get(url, timeout=30.0)
    print(json.dumps({"bytes": len(body), "seconds": time.monotonic() - start}))


def attempts(url, seconds, interval, timeout):
    results, lock, threads = [], threading.Lock(), []

    def one(start):
        try:
            address, ok = get(url, timeout=timeout).decode().strip(), True
        except OSError:
            address, ok = None, False
        with lock:
            results.append({"start": start, "ok": ok, "address": address})

    end, next_at = time.time() + seconds, time.time()
    while next_at < end:
        delay = next_at - time.time()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=one, args=(time.time(),))
        thread.start()
        threads.append(thread)
        next_at += interval
    for thread in threads:
        thread.join()
    print(json.dumps(sorted(results, key=lambda r: r["start"])))


def dns(server, name, n):
    answers, failures = collections.Counter(), 0
    for i in range(n):
        query = struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0)
        query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
        query += struct.pack(">HH", 1, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2.0)
            try:
                sock.sendto(query, (server, 53))
                reply = sock.recv(512)
            except OSError:
                failures += 1
                continue
        ident, flags, _, count_answers = struct.unpack(">HHHH", reply[:8])
        if ident != i or flags & 0xF != 0 or count_answers == 0:
            failures += 1
            continue
        answers[socket.inet_ntoa(reply[-4:])] += 1
    print(json.dumps({"answers": answers, "failures": failures}))


def udp(host, port, seconds, interval):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    answered, by_address, last = set(), collections.Counter(), None
    sent, start = 0, time.time()
    end, next_at, linger = start + seconds, start, start + seconds + 0.5
    while time.time() < linger:
        now = time.time()
        if now >= next_at and now < end:
            sock.sendto(str(sent).encode(), (host, port))
            sent += 1
            next_at += interval
        wake = min(next_at, linger) if now < end else linger
        ready, _, _ = select.select([sock], [], [], max(0.0, wake - time.time()))
        if ready:
            seq, address = sock.recv(200).decode().split()
            if last is None:
                print(json.dumps({"first": address}), flush=True)
            answered.add(int(seq))
            by_address[address] += 1
            last = address
    print(json.dumps({"sent": sent, "answered": len(answered), "lost": sent - len(answered),
                      "by_address": by_address, "last_address": last}), flush=True)


def sources(first, n, urls):
    import ipaddress
    seen, failures = {}, 0
    start = ipaddress.IPv4Address(first)
    for i in range(n):
        source = str(start + i)
        for url in urls:
            try:
                address = get(url, source=source).decode().strip()
            except OSError:
                failures += 1
                address = None
            seen.setdefault(source, []).append(address)
    print(json.dumps({"seen": seen, "failures": failures}))


def sessions(host, port, tcp, udp, seconds, interval):
    conns, flows = [], []
    for _ in range(tcp):
        conn = socket.create_connection((host, port), timeout=5.0)
        conn.setblocking(False)
        conns.append({"sock": conn, "buffer": b"", "addresses": set(), "sent": 0,
                      "answered": 0, "error": None})
    for _ in range(udp):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect((host, port - 1))
        flows.append({"sock": sock, "addresses": set(), "sent": 0, "answered": 0,
                      "error": None})
    print(json.dumps({"open": tcp + udp}), flush=True)
    by_fd = {s["sock"].fileno(): ("tcp", s) for s in conns}
    by_fd.update({s["sock"].fileno(): ("udp", s) for s in flows})

    def broken(session, why):
        if session["error"] is None:
            session["error"] = why

    def receive(kind, session):
        try:
            data = session["sock"].recv(65536)
        except BlockingIOError:
            return
        except OSError as err:
            return broken(session, type(err).__name__)
        if kind == "udp":
            session["addresses"].add(data.split()[1].decode())
            session["answered"] += 1
            return
        if not data:
            return broken(session, "closed by the peer")
        session["buffer"] += data
        *lines, session["buffer"] = session["buffer"].split(b"\n")
        for line in lines:
            session["addresses"].add(line.split()[1].decode())
            session["answered"] += 1

    start = time.time()
    end, next_at, linger = start + seconds, start, start + seconds + 1.0
    while time.time() < linger:
        now = time.time()
        if now >= next_at and now < end:
            for kind, session in list(by_fd.values()):
                if session["error"] is not None:
                    continue
                message = str(session["sent"]).encode()
                try:
                    session["sock"].send(message + b"\n" if kind == "tcp" else message)
                    session["sent"] += 1
                except OSError as err:
                    broken(session, type(err).__name__)
            next_at += interval
        wake = min(next_at, linger) if now < end else linger
        ready, _, _ = select.select(list(by_fd), [], [], max(0.0, wake - time.time()))
        for fd in ready:
            receive(*by_fd[fd])
    report = lambda group: [{"addresses": sorted(s["addresses"]), "sent": s["sent"],
                             "answered": s["answered"], "error": s["error"]} for s in group]
    print(json.dumps({"tcp": report(conns), "udp": report(flows)}), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "count":
        count(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 300,
              sys.argv[5] if len(sys.argv) > 5 else None)
    elif mode == "dns":
        dns(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "stream":
        stream(sys.argv[2])
    elif mode == "attempts":
        attempts(sys.argv[2], *map(float, sys.argv[3:6]))
    elif mode == "sources":
        sources(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    elif mode == "sessions":
        sessions(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
                 float(sys.argv[6]), float(sys.argv[7]))
    elif mode == "udp":
        udp(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit(f"unknown mode {mode}")
