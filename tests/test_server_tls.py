"""TLS and mutual TLS against a real `edgeseq serve` on 127.0.0.1: a throwaway CA (made here
with `cryptography`) signs the server's certificate and a client's; httpx and the openai
client over https get answers, plain http to the TLS port does not, and with mutual TLS a
client without a certificate is refused at the handshake."""

import datetime
import ipaddress
import ssl
from pathlib import Path

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeseq.serving.process import serve_process

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nash-t5-tiny"
PASSWORD = "server-key-password"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(subject: str, key, issuer_name: x509.Name, issuer_key, ca: bool, usage=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage == "server":
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif usage == "client":
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, key, cert, password: str | None = None) -> tuple[Path, Path]:
    encryption = serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8, encryption))
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path.with_suffix(".pem"), path.with_suffix(".key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("edgeseq test CA", ca_key, _name("edgeseq test CA"), ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_pem, _ = _write(folder / "ca", ca_key, ca)
    cert, key = _write(folder / "server", server_key,
                       _certificate("127.0.0.1", server_key, ca.subject, ca_key, ca=False, usage="server"), PASSWORD)
    client_cert, client_key_file = _write(folder / "client", client_key,
                                          _certificate("a client", client_key, ca.subject, ca_key, ca=False, usage="client"))
    return {"ca": ca_pem, "cert": cert, "key": key, "client_cert": client_cert, "client_key": client_key_file}


def trusting(pki, with_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if with_client_cert:
        context.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
    return context


def tls_options(pki) -> list[str]:
    return ["--ssl-certfile", str(pki["cert"]), "--ssl-keyfile", str(pki["key"]), "--ssl-keyfile-password", PASSWORD]


def test_https_answers_and_plain_http_to_the_tls_port_does_not(pki):
    with serve_process(FIXTURE, "--name", "tiny", *tls_options(pki), tls_context=trusting(pki)) as (url, _):
        assert url.startswith("https://127.0.0.1:")
        r = httpx.post(f"{url}/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0},
                       verify=trusting(pki), timeout=30)
        assert r.status_code == 200 and len(r.json()["choices"][0]["token_ids"]) <= 4
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30,
                               http_client=httpx.Client(verify=trusting(pki)))
        assert [m.id for m in client.models.list().data] == ["tiny"]
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https://", "http://") + "/health/live", timeout=10)
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the test CA
            httpx.get(f"{url}/health/live", timeout=10)


def test_mutual_tls_refuses_a_client_without_a_certificate(pki):
    options = [*tls_options(pki), "--ssl-ca-certs", str(pki["ca"]), "--ssl-client-cert", "required"]
    with serve_process(FIXTURE, "--name", "tiny", *options, tls_context=trusting(pki, True)) as (url, _):
        r = httpx.get(f"{url}/v1/models", verify=trusting(pki, True), timeout=30)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == "tiny"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/v1/models", verify=trusting(pki), timeout=10)


@pytest.mark.parametrize("args, message", [
    (["--ssl-client-cert", "required"], "--ssl-client-cert required needs --ssl-ca-certs"),
    (["--ssl-keyfile-password", "wrong"], "does not load"),
])
def test_bad_tls_options_are_one_line_errors(pki, args, message):
    import subprocess
    import sys

    options = [*tls_options(pki)[:4], *args] if "--ssl-keyfile-password" in args else [*tls_options(pki), *args]
    r = subprocess.run([sys.executable, "-m", "edgeseq.cli", "serve", str(FIXTURE), "--port", "1", *options],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
