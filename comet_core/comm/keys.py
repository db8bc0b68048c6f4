"""`comet keys`: a small certificate authority and one certificate per role for the TCP transport.

1. A CA key (ECDSA P-256) and a self-signed CA certificate (`ca.pem`), valid `days` days.
2. For each role (p0, p1, dealer, client, owner): a key (`<role>.key`, mode 0600) and a certificate
   (`<role>.pem`) signed by the CA, whose subject CN and DNS name are the role: a TLS peer checks the
   certificate it is shown names the role it expects (tls.py).
3. The CA's private key (`ca.key`) is written too, for issuing more certificates (unless `keep_ca_key` is
   false: a one-run CA, as run-experiment makes, never stores it); it need not leave the machine that
   made the keys. Each machine needs `ca.pem` and its own role's `.pem` and `.key` only.
Existing files are never replaced unless `overwrite`; a private key is mode 0600 even where it replaces an
older file of another mode, and `check_keys` refuses a private key that group or others may read.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from comet_core.errors import CometError

ROLES = ("p0", "p1", "dealer", "client", "owner")


def key_files(role: str) -> tuple[str, str]:
    return f"{role}.pem", f"{role}.key"


def make_keys(out: str | os.PathLike, overwrite: bool = False, days: int = 30, keep_ca_key: bool = True) -> list[Path]:
    """Write ca.pem, ca.key (if keep_ca_key) and <role>.pem/.key for every role into `out`; returns the
    files written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out)
    names = ["ca.pem", "ca.key"] + [f for r in ROLES for f in key_files(r)]
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise CometError(f"{out} already holds keys ({', '.join(existing[:3])}{', ...' if len(existing) > 3 else ''}); "
                         "use another --out, or --overwrite to replace them (certificates already copied "
                         "to other machines stop working)")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    def write(name: str, data: bytes, private: bool = False) -> Path:
        p = out / name
        mode = 0o600 if private else 0o644
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.fchmod(fd, mode)   # O_CREAT's mode applies to new files only: an old 0644 key must not stay 0644
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return p

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "comet CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    written = [write("ca.pem", ca.public_bytes(serialization.Encoding.PEM))]
    if keep_ca_key:
        written.append(write("ca.key", pem_key(ca_key), True))
    elif (out / "ca.key").exists():   # overwrite: an older CA's key does not belong to these certificates
        (out / "ca.key").unlink()
    for role in ROLES:
        k = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, role)]))
                .issuer_name(ca_name).public_key(k.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(role)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        pem, key = key_files(role)
        written += [write(pem, cert.public_bytes(serialization.Encoding.PEM)), write(key, pem_key(k), True)]
    return written


def check_keys(keys_dir: str | os.PathLike, role: str) -> tuple[Path, Path, Path]:
    """(ca.pem, <role>.pem, <role>.key) in keys_dir, or a one-line error saying what is missing."""
    d = Path(keys_dir)
    files = (d / "ca.pem", *(d / f for f in key_files(role)))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CometError(f"role {role}: missing key files {', '.join(missing)}; make them with "
                         f"`comet keys --out {d}` and copy ca.pem, {role}.pem and {role}.key to this machine")
    mode = files[2].stat().st_mode & 0o777
    if os.name == "posix" and mode & 0o077:
        raise CometError(f"role {role}: the private key {files[2]} may be read by others (mode {mode:04o}); "
                         f"`chmod 600 {files[2]}`")
    return files
