"""A small real HTTPS server for tests that offers HTTP/2 (ALPN ``h2``) and HTTP/1.1.

Its certificate is for 127.0.0.1, signed by a throwaway CA made at start (``ca_file``, PEM), so
a client that trusts that file verifies the connection for real. Every request is recorded
with the protocol it came over and the connection it came on. Bodies stay under HTTP/2's
initial flow-control window (64 KiB): no window updates are needed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import h2.config
import h2.connection
import h2.events
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["H2Request", "H2Server"]


@dataclass(frozen=True)
class H2Request:
    path: str
    protocol: str  # "h2" or "http/1.1"
    connection: int  # the connection's number, in the order they were accepted


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem)."""
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("newsflow test CA"))
        .issuer_name(name("newsflow test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class H2Server:
    """HTTPS on 127.0.0.1 (ephemeral port); ``routes`` maps a path to (content type, body).
    Unknown paths get 404. With ``h2=False`` it offers HTTP/1.1 only. A context manager."""

    __test__ = False

    def __init__(
        self, folder: Path, routes: dict[str, tuple[str, bytes]], *, h2: bool = True
    ) -> None:
        self.routes = routes
        self.requests: list[H2Request] = []
        self.connections = 0
        """TCP connections accepted (TLS handshakes tried)."""
        self._lock = threading.Lock()
        self.ca_file, cert, key = _certificates(folder)
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(cert, key)
        self._tls.set_alpn_protocols(["h2", "http/1.1"] if h2 else ["http/1.1"])
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.base_url = f"https://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="H2Server").start()

    def url(self, path: str) -> str:
        return self.base_url + path

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def __enter__(self) -> H2Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(raw, self.connections), daemon=True).start()

    def _answer(self, path: str, protocol: str, conn: int) -> tuple[int, str, bytes]:
        with self._lock:
            self.requests.append(H2Request(path, protocol, conn))
        if path in self.routes:
            ctype, body = self.routes[path]
            return 200, ctype, body
        return 404, "text/plain", b"not found\n"

    def _serve(self, raw: socket.socket, conn: int) -> None:
        try:
            with self._tls.wrap_socket(raw, server_side=True) as tls:
                if tls.selected_alpn_protocol() == "h2":
                    self._serve_h2(tls, conn)
                else:
                    self._serve_http11(tls, conn)
        except (OSError, ssl.SSLError):
            return

    def _serve_h2(self, tls: ssl.SSLSocket, conn: int) -> None:
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2c.initiate_connection()
        tls.sendall(h2c.data_to_send())
        while data := tls.recv(65536):
            for event in h2c.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = {
                        (k.decode() if isinstance(k, bytes) else k): (
                            v.decode() if isinstance(v, bytes) else v
                        )
                        for k, v in event.headers
                    }
                    status, ctype, body = self._answer(headers[":path"], "h2", conn)
                    h2c.send_headers(
                        event.stream_id,
                        [
                            (":status", str(status)),
                            ("content-type", ctype),
                            ("content-length", str(len(body))),
                        ],
                    )
                    h2c.send_data(event.stream_id, body, end_stream=True)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    return
            tls.sendall(h2c.data_to_send())

    def _serve_http11(self, tls: ssl.SSLSocket, conn: int) -> None:
        reader = tls.makefile("rb")
        while line := reader.readline():
            path = line.split()[1].decode()
            while reader.readline() not in (b"\r\n", b"\n", b""):
                pass  # the request's headers
            status, ctype, body = self._answer(path, "http/1.1", conn)
            tls.sendall(
                f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
