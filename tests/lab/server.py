"""The lab's "internet" server: answers GET / with the client's address as the
server sees it (after the router's NAT, that is the uplink it came through) and
GET /stream?seconds=N with a steady stream of data for N seconds. On UDP port+1 it
echoes each datagram followed by the sender's address (and, given UDP_ADDRESS,
likewise on 5060, as a SIP server listens); on TCP port+2 it answers
each line with the line and the peer's address (long-lived sessions).

usage: server.py ADDRESS PORT [UDP_ADDRESS]   (UDP binds UDP_ADDRESS, default ADDRESS:
a UDP socket bound to 0.0.0.0 would answer from whatever address routing picks).
An IPv6 ADDRESS ("::", "2001:db8:ff::10") serves IPv6."""
import http.server
import socket
import socketserver
import sys
import threading
import time
import urllib.parse


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/stream":
            seconds = float(urllib.parse.parse_qs(url.query).get("seconds", ["10"])[0])
            self.send_response(200)
            self.end_headers()
            chunk = b"x" * 16384
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                self.wfile.write(chunk)
                time.sleep(0.01)
            return
        body = (self.client_address[0] + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


def family(address):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def udp_echo(address, port):
    sock = socket.socket(family(address), socket.SOCK_DGRAM)
    sock.bind((address, port))
    while True:
        data, peer = sock.recvfrom(200)
        sock.sendto(data + b" " + peer[0].encode(), peer)


class LineEcho(socketserver.StreamRequestHandler):
    def handle(self):
        peer = self.client_address[0].encode()
        for line in self.rfile:
            self.wfile.write(line.rstrip(b"\n") + b" " + peer + b"\n")


class SessionServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024


if __name__ == "__main__":
    address, port = sys.argv[1], int(sys.argv[2])
    udp_address = sys.argv[3] if len(sys.argv) > 3 else address
    for udp_port in (port + 1, 5060) if len(sys.argv) > 3 else (port + 1,):
        threading.Thread(target=udp_echo, args=(udp_address, udp_port), daemon=True).start()
    SessionServer.address_family = Server.address_family = family(address)
    sessions = SessionServer((address, port + 2), LineEcho)
    threading.Thread(target=sessions.serve_forever, daemon=True).start()
    Server((address, port), Handler).serve_forever()
