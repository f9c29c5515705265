"""A real nginx in front of a test server, configured with the README's own block.

The README's ``location`` block is used as written: only its ``proxy_pass`` port is
rewritten to the server under test. Around it, a minimal ``nginx.conf`` listens on a
free 127.0.0.1 port (with TLS, a trustme certificate for 127.0.0.1 and localhost)
and keeps its pid, logs and temporary files in a directory of the test's own. nginx
runs in the foreground (``daemon off``) as a process the test started, and is
stopped by its PID.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from tests.servers import ROOT, free_port, stop_process

NGINX = Path("/usr/sbin/nginx")
START_TIMEOUT_SECONDS = 10.0
_PROXY_PASS = re.compile(r"proxy_pass http://127\.0\.0\.1:\d+;")


def readme_nginx_block() -> str:
    """The README's ``nginx`` code block, exactly as a reader would copy it."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) == 1, f"expected one nginx block in README.md, got {blocks}"
    return str(blocks[0])


@dataclass
class Nginx:
    """nginx on 127.0.0.1, proxying to ``upstream_port`` with the README's block.

    With ``tls``, it terminates TLS as the README's deployment does: ``client_context``
    trusts its certificate.
    """

    upstream_port: int
    directory: Path
    tls: bool = False
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _ca: trustme.CA = field(default_factory=trustme.CA, repr=False)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def origin(self) -> str:
        """The origin a browser would send for a page served through this nginx."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self._ca.configure_trust(context)
        return context

    def start(self) -> Nginx:
        self.port = free_port()
        config = self.directory / "nginx.conf"
        config.write_text(self._config())
        with (self.directory / "stderr.log").open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    str(NGINX),
                    *("-p", f"{self.directory}/"),
                    *("-c", str(config)),
                    *("-e", str(self.directory / "error.log")),
                ],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited at start:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 1.0).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen within {START_TIMEOUT_SECONDS}s")

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGQUIT (nginx's graceful stop), then SIGKILL: only the process started."""
        stop_process(self.process, signal.SIGQUIT)

    def log(self) -> str:
        logs = [self.directory / "stderr.log", self.directory / "error.log"]
        return "\n".join(p.read_text(errors="replace") for p in logs if p.exists())

    def _config(self) -> str:
        block, count = _PROXY_PASS.subn(
            f"proxy_pass http://127.0.0.1:{self.upstream_port};", readme_nginx_block()
        )
        assert count == 1, "the README's nginx block needs one proxy_pass to 127.0.0.1"
        temp = self.directory / "temp"
        temp.mkdir(exist_ok=True)
        paths = "\n".join(
            f"    {kind}_temp_path {temp / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""\
daemon off;
master_process off;  # one process, the one the test started and stops by its PID
pid {self.directory / "nginx.pid"};
error_log {self.directory / "error.log"} info;
events {{
    worker_connections 256;
}}
http {{
    access_log {self.directory / "access.log"};
{paths}
    server {{
        {self._listen()}
{block}
    }}
}}
"""

    def _listen(self) -> str:
        if not self.tls:
            return f"listen 127.0.0.1:{self.port};"
        cert = self._ca.issue_cert("127.0.0.1", "localhost")
        cert_file, key_file = self.directory / "cert.pem", self.directory / "key.pem"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        return (
            f"listen 127.0.0.1:{self.port} ssl;\n"
            f"        ssl_certificate {cert_file};\n"
            f"        ssl_certificate_key {key_file};"
        )
