"""Credentials for a deployment: a self-signed CA + SuperLink certificate, SuperNode keys.

* :func:`generate_tls_certs` -- a self-signed CA and a SuperLink certificate (the
  ``cryptography`` package, a Flower dependency);
* :func:`generate_supernode_keys` -- a SuperNode's EC P-384 key pair in OpenSSH
  format, as ``flower-supernode --auth-supernode-private-key`` and
  ``flwr supernode register`` expect.

``python -m simulations.deploy certs`` / ``keys`` run them from the shell.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a self-signed CA and the SuperLink certificate it signed."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def generate_tls_certs(
    out_dir: str | Path,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 365,
) -> TlsFiles:
    """Write a self-signed CA and a server certificate for ``hosts`` into ``out_dir``.

    Parameters
    ----------
    out_dir : str | Path
        Directory for ``ca.crt``, ``ca.key``, ``server.pem`` and ``server.key``.
    hosts : Sequence[str] (default: ("localhost", "127.0.0.1"))
        DNS names and IP addresses the SuperLink is reached at; all go into the
        certificate's subjectAltName. ``localhost``/``127.0.0.1`` are always added:
        the SuperLink's own SuperExec connects through them.
    days : int (default: 365)
        Validity.

    Returns
    -------
    TlsFiles
        The paths written. Only ``ca.crt`` goes to SuperNodes and CLI users.

    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlean test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, "localhost", "127.0.0.1"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    files = TlsFiles(out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(files.ca_key, key_pem(ca_key))
    _write_private(files.server_key, key_pem(server_key))
    return files


@dataclass(frozen=True)
class NodeKeys:
    """A SuperNode's authentication key pair (OpenSSH format)."""

    private_key: Path
    public_key: Path


def generate_supernode_keys(out_dir: str | Path, name: str) -> NodeKeys:
    """Write an EC P-384 key pair ``<name>`` / ``<name>.pub`` (like ``ssh-keygen -t ecdsa -b 384``).

    The private key stays on the device (``--auth-supernode-private-key``); the
    public key is registered with ``flwr supernode register <name>.pub``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    keys = NodeKeys(out / name, out / f"{name}.pub")
    _write_private(
        keys.private_key,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    keys.public_key.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        + b"\n"
    )
    return keys


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)
