"""TLS for `edgeseq serve`: the certificate options, checked before the model loads, as
uvicorn takes them.

`certfile` and `keyfile` (PEM; `keyfile_password` for an encrypted key) make the port
https only. `ca_certs` with `client_cert="required"` is mutual TLS: a client must present a
certificate that CA signed, or the handshake fails before any HTTP is read; "optional"
asks for one and checks it when sent.
"""

import ssl
from dataclasses import dataclass
from pathlib import Path

from edgeseq.errors import BuildError

CLIENT_CERT = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


@dataclass(frozen=True)
class TLSOptions:
    certfile: Path | None = None
    keyfile: Path | None = None
    keyfile_password: str | None = None
    ca_certs: Path | None = None
    client_cert: str = "none"

    def __post_init__(self):
        if (self.certfile is None) != (self.keyfile is None):
            raise BuildError("TLS needs both --ssl-certfile and --ssl-keyfile", "pass the certificate and its private key")
        if self.client_cert not in CLIENT_CERT:
            raise BuildError(f"--ssl-client-cert {self.client_cert!r} is not one of {', '.join(CLIENT_CERT)}",
                             "pass --ssl-client-cert required for mutual TLS")
        if self.client_cert != "none" and self.ca_certs is None:
            raise BuildError(f"--ssl-client-cert {self.client_cert} needs --ssl-ca-certs",
                             "pass the CA bundle that signs your clients' certificates")
        if self.certfile is None and (self.ca_certs is not None or self.client_cert != "none"):
            raise BuildError("--ssl-ca-certs and --ssl-client-cert need TLS on", "pass --ssl-certfile and --ssl-keyfile too")
        for option, path in (("--ssl-certfile", self.certfile), ("--ssl-keyfile", self.keyfile),
                             ("--ssl-ca-certs", self.ca_certs)):
            if path is not None and not Path(path).is_file():
                raise BuildError(f"{option} {path} is not a file", f"pass the path of a PEM file to {option}")
        if self.certfile is not None:
            self._check_loads()

    @property
    def enabled(self) -> bool:
        return self.certfile is not None

    @property
    def scheme(self) -> str:
        return "https" if self.enabled else "http"

    def _check_loads(self) -> None:
        """The same load uvicorn does, now, so a bad key or password is one line, not a traceback."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(str(self.certfile), str(self.keyfile), self.keyfile_password)
            if self.ca_certs is not None:
                context.load_verify_locations(str(self.ca_certs))
        except (ssl.SSLError, ValueError) as e:
            raise BuildError(f"the TLS certificate, key or CA does not load: {e}",
                             "check that the key matches the certificate, and --ssl-keyfile-password") from None

    def uvicorn_options(self) -> dict:
        if not self.enabled:
            return {}
        return {"ssl_certfile": str(self.certfile), "ssl_keyfile": str(self.keyfile),
                "ssl_keyfile_password": self.keyfile_password,
                "ssl_ca_certs": None if self.ca_certs is None else str(self.ca_certs),
                "ssl_cert_reqs": CLIENT_CERT[self.client_cert]}
