"""TLS for the tests: a throwaway CA (``openssl``), and a Redis and a PostgreSQL of the test's own
that speak only TLS and require a client certificate, on free loopback ports. Never the shared
servers.

The client side is configured the way the README documents it: the CA, the client certificate
and its key as query parameters of the ``rediss://`` URL (redis-py's ``ssl_ca_certs``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``) and as libpq parameters of the PostgreSQL
DSN (``sslmode=verify-full``, ``sslrootcert``, ``sslcert``, ``sslkey``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlencode

import redis
from psycopg.conninfo import make_conninfo

from tests.support.servers import AS_USER, HOST, PostgresServer, RedisServer
from tests.support.services import wait_for

#: The server certificates' names: the loopback address (verify-full checks it) and localhost.
SERVER_SAN = "IP:127.0.0.1,DNS:localhost"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class CertificateAuthority:
    """A self-signed CA in ``directory`` (``<name>-ca.pem``) that issues certificates."""

    def __init__(self, directory: Path, name: str = "catfleet-test"):
        self.dir = directory
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        self.key = directory / f"{name}-ca.key"
        self.cert = directory / f"{name}-ca.pem"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(self.key), "-out", str(self.cert), "-subj", f"/CN={name} CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory,
        )  # fmt: skip

    def issue(self, stem: str, common_name: str, *, san: str | None = None) -> tuple[Path, Path]:
        """A certificate (``<stem>.pem``) and its key (``<stem>.key``, mode 0600) signed by this CA."""
        key, csr, cert = (self.dir / f"{stem}.{ext}" for ext in ("key", "csr", "pem"))
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", f"/CN={common_name}", cwd=self.dir,
        )  # fmt: skip
        ext = self.dir / f"{stem}.ext"
        lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment"]
        lines.append(f"subjectAltName={san}" if san else "extendedKeyUsage=clientAuth")
        if san:
            lines.append("extendedKeyUsage=serverAuth")
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext), cwd=self.dir,
        )  # fmt: skip
        key.chmod(0o600)  # libpq refuses a client key others can read
        return cert, key


class TlsFiles:
    """Everything a TLS test needs: the CA, a server certificate for 127.0.0.1, a client
    certificate (CN ``postgres``: PostgreSQL's ``cert`` authentication maps it to that user), and
    a second, unrelated CA (the wrong one)."""

    def __init__(self, directory: Path):
        self.ca = CertificateAuthority(directory / "ca")
        self.server_cert, self.server_key = self.ca.issue("server", "catfleet test server", san=SERVER_SAN)
        self.client_cert, self.client_key = self.ca.issue("client", "postgres")
        self.wrong_ca = CertificateAuthority(directory / "wrong-ca", "wrong")

    def redis_url(self, port: int, db: int = 0, *, ca: Path | None = None) -> str:
        """A ``rediss://`` URL that verifies the server against ``ca`` (default: the right CA) and
        presents the client certificate."""
        query = urlencode(
            {
                "ssl_cert_reqs": "required",
                "ssl_ca_certs": str(ca or self.ca.cert),
                "ssl_certfile": str(self.client_cert),
                "ssl_keyfile": str(self.client_key),
            }
        )
        return f"rediss://{HOST}:{port}/{db}?{query}"

    def postgres_dsn(self, dsn: str, *, ca: Path | None = None) -> str:
        """``dsn`` with ``sslmode=verify-full`` against ``ca`` (default: the right CA) and the client
        certificate."""
        return make_conninfo(
            dsn,
            sslmode="verify-full",
            sslrootcert=str(ca or self.ca.cert),
            sslcert=str(self.client_cert),
            sslkey=str(self.client_key),
        )


class TlsRedisServer(RedisServer):
    """A ``redis-server`` that listens with TLS only (``--port 0 --tls-port``) and requires a client
    certificate signed by the CA (``--tls-auth-clients yes``)."""

    def __init__(self, directory: Path, tls: TlsFiles):
        super().__init__(directory)
        self.tls = tls
        self.url = tls.redis_url(self.port)

    def start(self) -> None:
        if self.running:
            return
        argv = [
            shutil.which("redis-server") or "redis-server",
            "--bind", self.bind, "--port", "0", "--tls-port", str(self.port), "--dir", str(self.dir),
            "--save", "", "--appendonly", "no", "--logfile", str(self.dir / f"redis-{self.port}.log"),
            "--tls-cert-file", str(self.tls.server_cert), "--tls-key-file", str(self.tls.server_key),
            "--tls-ca-cert-file", str(self.tls.ca.cert), "--tls-auth-clients", "yes",
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL)
        wait_for(self._pings, timeout=10, what=f"redis-server (TLS) on {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)


class TlsPostgresServer(PostgresServer):
    """A PostgreSQL cluster of its own with ``ssl=on`` that accepts only TLS connections from
    loopback authenticated by a client certificate of the CA (``hostssl ... cert``: no password,
    no plain TCP). ``url`` is its maintenance database over verify-full TLS."""

    def __init__(self, tls: TlsFiles):
        super().__init__()
        self.tls = tls
        for src, name in (
            (tls.server_cert, "server.crt"),
            (tls.server_key, "server.key"),
            (tls.ca.cert, "ca.crt"),
        ):
            target = self.data / name
            shutil.copy(src, target)
            target.chmod(0o600)
            if AS_USER:
                shutil.chown(target, "postgres", "postgres")
        (self.data / "pg_hba.conf").write_text(f"hostssl all all {HOST}/32 cert\n")
        self.url = tls.postgres_dsn(self.url)

    def start(self) -> None:
        opts = (
            f"-c listen_addresses={self.bind} -p {self.port} -c unix_socket_directories='' -c fsync=off"
            " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_ca_file=ca.crt"
        )
        self._ctl("-o", opts, "start")
        wait_for(self._accepts, timeout=20, interval=0.1, what=f"postgres (TLS) on {self.port}")
