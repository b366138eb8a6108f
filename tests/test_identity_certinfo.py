"""`sidecar.identity.certinfo`, the DER reader a sidecar uses instead of `cryptography`.

`cryptography` is the oracle: certificates of every shape the mesh meets (ECDSA and RSA keys,
several kinds of SAN, UTCTime and GeneralizedTime, critical or not, with and without extensions)
are generated with it and must read the same; mutated DER must either be refused with
`CertificateError` or, where `cryptography` reads it, read the same. Then the PEM and key helpers
and what `MeshCredentials.load` says about bad files now that OpenSSL checks the key and chain.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.identity import ca, certinfo, spiffe
from sidecar.identity.certinfo import CertificateError
from sidecar.identity.credentials import CredentialsError
from sidecar.identity.tls import MeshCredentials, client_context, server_context
from tests.pki import workload_dataplane

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER

# Key generation is the slow part (RSA above all): a few keys, drawn from by the strategies.
KEYS = {
    "ec-p256": ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": ec.generate_private_key(ec.SECP384R1()),
    "rsa-2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}
ISSUER_KEY = KEYS["ec-p256"]

uri_chars = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="%"),
    min_size=1,
    max_size=40,
)
uris = st.builds(
    lambda scheme, rest: f"{scheme}://{rest}", st.sampled_from(["spiffe", "kuma"]), uri_chars
)
dns_names = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}\Z")
general_names = st.one_of(
    uris.map(x509.UniformResourceIdentifier),
    dns_names.map(x509.DNSName),
    dns_names.map(lambda d: x509.RFC822Name(f"user@{d}")),
    st.ip_addresses().map(x509.IPAddress),
    st.just(x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4.5"))),
    st.just(x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x03abc")),
    dns_names.map(
        lambda d: x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, d)]))
    ),
)
# Both time encodings: UTCTime before 2050, GeneralizedTime from 2050 (RFC 5280 4.1.2.5).
moments = st.datetimes(
    min_value=datetime(1950, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=0))
names = st.lists(
    st.sampled_from([NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.COUNTRY_NAME]),
    max_size=3,
    unique=True,
).map(
    lambda oids: x509.Name(
        [x509.NameAttribute(o, "AB" if o == NameOID.COUNTRY_NAME else "x") for o in oids]
    )
)


@st.composite
def certificates(draw: st.DrawFn) -> x509.Certificate:
    key_name = draw(st.sampled_from(sorted(KEYS)))
    not_before = draw(moments)
    not_after = draw(moments.filter(lambda d: d >= not_before))
    builder = (
        x509.CertificateBuilder()
        .subject_name(draw(names))
        .issuer_name(draw(names))
        .public_key(KEYS[key_name].public_key())
        .serial_number(draw(st.integers(1, 2**159 - 1)))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    sans = draw(st.none() | st.lists(general_names, min_size=1, max_size=6))
    if sans is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(sans), critical=draw(st.booleans())
        )
    if draw(st.booleans()):
        builder = builder.add_extension(
            x509.BasicConstraints(ca=draw(st.booleans()), path_length=None), critical=True
        )
    if draw(st.booleans()):
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if draw(st.booleans()):
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(KEYS[key_name].public_key()), critical=False
        )
    return builder.sign(ISSUER_KEY, hashes.SHA256())


def oracle(cert: x509.Certificate) -> tuple[int, datetime, datetime, tuple[str, ...], str]:
    """What `cryptography` reads: (serial, not before, not after, URI SANs, key kind)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        found = ()
    key = cert.public_key()
    kind = {
        ec.EllipticCurvePublicKey: "ec",
        rsa.RSAPublicKey: "rsa",
        ed25519.Ed25519PublicKey: "ed25519",
    }
    key_kind = next(v for k, v in kind.items() if isinstance(key, k))
    return (
        cert.serial_number,
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        found,
        key_kind,
    )


def ours(der: bytes) -> tuple[int, datetime, datetime, tuple[str, ...], str]:
    got = certinfo.parse_certificate(der)
    return (
        got.serial_number,
        got.not_valid_before_utc,
        got.not_valid_after_utc,
        got.uris,
        got.key_algorithm,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(certificates())
def test_generated_certificates_read_as_cryptography_reads_them(cert):
    der = cert.public_bytes(DER)
    assert ours(der) == oracle(cert)
    assert certinfo.to_pem(der) == cert.public_bytes(PEM)
    assert spiffe.identities_of(der) == list(oracle(cert)[3])
    assert spiffe.identities_of(cert) == list(oracle(cert)[3])


def test_the_mesh_certificates_read_as_cryptography_reads_them():
    """What `pysidecar certs` issues: ECDSA and RSA CAs and workloads."""
    dp = workload_dataplane("web-1", "web", version="v1")
    for use_rsa in (False, True):
        authority = ca.create_ca("default", rsa=use_rsa)
        issued = ca.issue_workload(authority.cert, authority.key, dp, rsa=use_rsa)
        for cert in (authority.cert, issued.cert):
            assert ours(cert.public_bytes(DER)) == oracle(cert)
        assert certinfo.parse_certificate(issued.cert.public_bytes(DER)).uris == (
            "spiffe://default/web",
            "kuma://kuma.io/service/web",
            "kuma://version/v1",
        )


_SEED_CA = ca.create_ca("default")
# The mutation test's seed: a workload certificate as the mesh CA issues it.
SEED = ca.issue_workload(
    _SEED_CA.cert, _SEED_CA.key, workload_dataplane("a-1", "a", version="v1")
).cert.public_bytes(DER)


def cryptography_reads(der: bytes) -> tuple[int, datetime, datetime, tuple[str, ...], str] | None:
    """`oracle` of the DER, or None where `cryptography` refuses it (or a key it cannot name)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        return oracle(cert)
    except Exception:  # noqa: BLE001 - ValueError, DuplicateExtension, an unsupported key...
        return None


@pytest.mark.filterwarnings("ignore:Parsed a serial number:UserWarning")
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "set", "insert", "delete"]),
            st.integers(0, 10**6),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=4,
    ),
)
@example(edits=[])
def test_mutated_der_is_refused_cleanly_or_read_as_cryptography_reads_it(edits):
    """Whatever `cryptography` reads, we read the same; the rest is refused with
    `CertificateError` (never another exception). We may read DER that `cryptography` refuses for
    fields we do not look at (a signature algorithm's parameters, a name's strings): OpenSSL
    parses and verifies the whole certificate before it is used."""
    der = bytearray(SEED)
    for op, at, value in edits:
        at %= len(der) + 1
        if op == "insert":
            der[at:at] = bytes([value])
        elif at < len(der):
            if op == "flip":
                der[at] ^= 1 << (value % 8)
            elif op == "set":
                der[at] = value
            else:
                del der[at]
    expected = cryptography_reads(bytes(der))
    try:
        got = ours(bytes(der))
    except CertificateError:
        got = None
    if expected is not None:
        assert got == expected


@pytest.mark.parametrize(
    ("der", "reason"),
    [
        (b"", "truncated"),
        (b"\x30\x80\x00\x00", "indefinite length"),
        (b"\x30\x81\x05\x02\x01\x01\x02\x00", "non-minimal length"),
        (b"\x30\x03\x02\x01\x01trailing", "trailing data"),
        (b"\x30\x05\x02\x01\x01", "runs past"),
        (b"\x31\x00", "expected tag 0x30"),
    ],
)
def test_malformed_der_says_what_is_wrong(der, reason):
    with pytest.raises(CertificateError, match=reason):
        certinfo.parse_certificate(der)
    with pytest.raises(spiffe.IdentityError, match="cannot be parsed"):
        spiffe.identities_of(der)


def test_a_duplicate_san_extension_is_refused():
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
        .public_key(ISSUER_KEY.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2024, 1, 1))
        .not_valid_after(datetime(2034, 1, 1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://a/b")]),
            critical=True,
        )
    )
    der = builder.sign(ISSUER_KEY, hashes.SHA256()).public_bytes(DER)
    assert certinfo.parse_certificate(der).uris == ("spiffe://a/b",)
    san_value = _tlv(0x30, _tlv(0x86, b"spiffe://a/c"))
    san_ext = _tlv(0x30, b"\x06\x03\x55\x1d\x11" + _tlv(0x04, san_value))
    doubled = _with_extra_extension(der, san_ext)
    with pytest.raises(CertificateError, match="duplicate extension 2.5.29.17"):
        certinfo.parse_certificate(doubled)
    with pytest.raises(x509.DuplicateExtension):
        x509.load_der_x509_certificate(doubled).extensions  # noqa: B018 - the oracle refuses too


def _encode_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _encode_length(len(content)) + content


def _children(data: bytes) -> list[bytes]:
    """The raw TLVs inside a constructed element's contents."""
    out = []
    pos = 0
    while pos < len(data):
        _tag, start, end = certinfo._tlv(data, pos, len(data))
        out.append(data[pos:end])
        pos = end
    return out


def _contents(tlv: bytes) -> bytes:
    _tag, start, end = certinfo._tlv(tlv, 0, len(tlv))
    return tlv[start:end]


def _with_extra_extension(der: bytes, extension: bytes) -> bytes:
    """The certificate with one more extension (its signature is no longer valid: not read)."""
    tbs, alg, sig = _children(_contents(der))
    fields = _children(_contents(tbs))
    exts_outer = fields[-1]
    exts = _contents(_contents(exts_outer))
    fields[-1] = _tlv(0xA3, _tlv(0x30, exts + extension))
    return _tlv(0x30, _tlv(0x30, b"".join(fields)) + alg + sig)


# --- PEM and keys -------------------------------------------------------------------------------


def test_pem_bundles_der_and_bad_files(tmp_path):
    authority = ca.create_ca("default")
    other = ca.create_ca("other")
    bundle = authority.cert_pem() + b"# a comment\n" + other.cert_pem()
    got = certinfo.pem_certificates(bundle, "ca.crt")
    assert [c.der for c in got] == [c.public_bytes(DER) for c in (authority.cert, other.cert)]
    assert certinfo.pem_certificates(authority.cert.public_bytes(DER), "ca.der")[0].uris == (
        "spiffe://default",
    )
    crlf = authority.cert_pem().replace(b"\n", b"\r\n")
    assert certinfo.pem_certificates(crlf, "crlf.crt")[0].der == authority.cert.public_bytes(DER)
    for data, reason in [
        (b"hello", "^x.crt: no PEM certificate found"),
        (authority.key_pem(), "^x.crt: not a valid PEM certificate: no CERTIFICATE block"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "^x.crt: not a valid PEM certificate",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "bad base64",
        ),
        (
            authority.cert_pem().replace(b"END CERTIFICATE", b"END X509 CRL"),
            "not a valid PEM certificate",
        ),
        (
            authority.cert_pem() + other.cert_pem()[:-40] + b"AAAA\n-----END CERTIFICATE-----\n",
            r"certificate 2\)",
        ),
    ]:
        with pytest.raises(CredentialsError, match=reason):
            certinfo.pem_certificates(data, "x.crt")


def _key_bytes(key, encoding, fmt, password: bytes | None = None) -> bytes:
    enc = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(encoding, fmt, enc)


@pytest.mark.parametrize("name", ["ec-p256", "ec-p384", "rsa-2048"])
@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL]
)
@pytest.mark.parametrize("encoding", [PEM, DER])
def test_private_keys_in_every_unencrypted_form_become_pem_for_openssl(name, fmt, encoding):
    key = KEYS[name]
    pem, kind = certinfo.private_key_pem(_key_bytes(key, encoding, fmt), "k.key")
    assert kind == name[:2].replace("rs", "rsa")
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert loaded.private_numbers() == key.private_numbers()


def test_private_key_refusals_name_the_file():
    ec_key = KEYS["ec-p256"]
    pkcs8, trad = serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL
    for data, reason in [
        (_key_bytes(ec_key, PEM, pkcs8, b"secret"), "^k.key: private key is encrypted"),
        (_key_bytes(ec_key, PEM, trad, b"secret"), "^k.key: private key is encrypted"),
        (
            _key_bytes(KEYS["ed25519"], PEM, pkcs8),
            r"^k.key: unsupported key type ed25519 \(use EC or RSA\)",
        ),
        (b"hello", "^k.key: not a valid private key"),
        (ca.create_ca("x").cert_pem(), "^k.key: not a valid private key: no PRIVATE KEY block"),
        (
            _key_bytes(ec_key, PEM, pkcs8).replace(b"PRIVATE KEY", b"RSA PRIVATE KEY"),
            "^k.key: not a valid private key: a RSA PRIVATE KEY block that holds a PRIVATE KEY",
        ),
        (
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
            "unsupported key format OPENSSH PRIVATE KEY",
        ),
    ]:
        with pytest.raises(CredentialsError, match=reason):
            certinfo.private_key_pem(data, "k.key")


# --- MeshCredentials.load: what OpenSSL now checks ----------------------------------------------


def _workload(
    issuer_cert: x509.Certificate,
    issuer_key,
    key,
    *,
    uri: str = "spiffe://default/web",
    eku: list[x509.ObjectIdentifier] | None = None,
    not_before: datetime | None = None,
    valid_for: timedelta = timedelta(hours=1),
) -> x509.Certificate:
    start = not_before or datetime.now(UTC) - timedelta(minutes=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                eku or [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _intermediate(root: ca.CertKey, key) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        )
        .sign(root.key, hashes.SHA256())
    )


def _write(directory: Path, ca_data: bytes, cert_data: bytes, key_data: bytes) -> tuple[Path, ...]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    for path, data in zip(paths, (ca_data, cert_data, key_data), strict=True):
        path.write_bytes(data)
    return paths


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(PEM) for c in certs)


def test_load_accepts_der_files_and_a_chain_with_an_intermediate(tmp_path):
    root = ca.create_ca("default")
    key = KEYS["ec-p256"]
    leaf = _workload(root.cert, root.key, key)
    paths = _write(
        tmp_path / "der",
        root.cert.public_bytes(DER),
        leaf.public_bytes(DER),
        _key_bytes(key, DER, serialization.PrivateFormat.PKCS8),
    )
    creds = MeshCredentials.load(*paths)
    assert creds.identities == ["spiffe://default/web"]
    assert creds.cert_pem == leaf.public_bytes(PEM)
    server_context(creds), client_context(creds)  # noqa: B018 - OpenSSL takes what was checked

    middle_key = KEYS["rsa-2048"]
    middle = _intermediate(root, middle_key)
    leaf = _workload(middle, middle_key, key)
    key_pem = _key_bytes(key, PEM, serialization.PrivateFormat.PKCS8)
    paths = _write(tmp_path / "chain", _pem(root.cert), _pem(leaf, middle), key_pem)
    creds = MeshCredentials.load(*paths)
    assert [c.der for c in creds.chain] == [leaf.public_bytes(DER), middle.public_bytes(DER)]
    assert creds.first_expiring() == leaf.not_valid_after_utc
    # Without the intermediate, the leaf does not chain to the bundle.
    paths = _write(tmp_path / "no-middle", _pem(root.cert), _pem(leaf), key_pem)
    with pytest.raises(
        CredentialsError, match=f"^{paths[1]}: certificate is not issued by any CA in"
    ):
        MeshCredentials.load(*paths)


def test_load_refusals_name_the_file(tmp_path):
    root = ca.create_ca("default")
    key = KEYS["ec-p256"]
    pkcs8 = serialization.PrivateFormat.PKCS8
    key_pem = _key_bytes(key, PEM, pkcs8)
    # An encrypted key.
    leaf = _workload(root.cert, root.key, key)
    paths = _write(
        tmp_path / "enc", _pem(root.cert), _pem(leaf), _key_bytes(key, PEM, pkcs8, b"pw")
    )
    with pytest.raises(CredentialsError, match=f"^{paths[2]}: private key is encrypted"):
        MeshCredentials.load(*paths)
    # An Ed25519 key (and its certificate): not what a Kuma mesh uses.
    ed = KEYS["ed25519"]
    paths = _write(
        tmp_path / "ed",
        _pem(root.cert),
        _pem(_workload(root.cert, root.key, ed)),
        _key_bytes(ed, PEM, pkcs8),
    )
    with pytest.raises(CredentialsError, match=f"^{paths[2]}: unsupported key type ed25519"):
        MeshCredentials.load(*paths)
    # A server-only certificate: peers would refuse it as a client.
    server_only = _workload(root.cert, root.key, key, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    paths = _write(tmp_path / "eku", _pem(root.cert), _pem(server_only), key_pem)
    with pytest.raises(
        CredentialsError, match=f"^{paths[1]}: certificate does not verify .*purpose"
    ):
        MeshCredentials.load(*paths)
    # An expired CA: the chain cannot verify (every peer would refuse it).
    old = ca.create_ca("default", now=datetime.now(UTC) - timedelta(days=20), valid_days=10)
    leaf = _workload(old.cert, old.key, key)
    paths = _write(tmp_path / "old-ca", _pem(old.cert), _pem(leaf), key_pem)
    with pytest.raises(
        CredentialsError, match=f"^{paths[1]}: certificate does not verify .*expired"
    ):
        MeshCredentials.load(*paths)
    # A garbled certificate, and a garbled CA bundle.
    paths = _write(
        tmp_path / "garbled",
        _pem(root.cert),
        b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
        key_pem,
    )
    with pytest.raises(CredentialsError, match=f"^{paths[1]}: not a valid PEM certificate"):
        MeshCredentials.load(*paths)
    paths = _write(tmp_path / "garbled-ca", b"hello", _pem(leaf), key_pem)
    with pytest.raises(CredentialsError, match=f"^{paths[0]}: no PEM certificate found"):
        MeshCredentials.load(*paths)


def test_load_trusts_the_clock_it_is_given_for_the_leaf(tmp_path):
    """Dev mode and tests load with their own clock: a leaf valid only then still loads (OpenSSL
    checks at the real time; its only objection is then the leaf's own validity)."""
    root = ca.create_ca("default")
    key = KEYS["ec-p256"]
    later = datetime.now(UTC) + timedelta(days=3)
    leaf = _workload(root.cert, root.key, key, not_before=later)
    key_pem = _key_bytes(key, PEM, serialization.PrivateFormat.PKCS8)
    paths = _write(tmp_path / "later", _pem(root.cert), _pem(leaf), key_pem)
    with pytest.raises(CredentialsError, match="not valid before"):
        MeshCredentials.load(*paths)
    assert MeshCredentials.load(
        *paths, now=later + timedelta(minutes=1)
    ).cert.der == leaf.public_bytes(DER)
    # ...but not a leaf of another CA, whatever the clock.
    other = ca.create_ca("default")
    stranger = _workload(other.cert, other.key, key, not_before=later)
    paths = _write(tmp_path / "stranger", _pem(root.cert), _pem(stranger), key_pem)
    with pytest.raises(CredentialsError, match="is not issued by any CA"):
        MeshCredentials.load(*paths, now=later + timedelta(minutes=1))
