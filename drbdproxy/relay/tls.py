"""Mutual TLS on the proxy-to-proxy link (``--tls-cert``, ``--tls-key``, ``--tls-ca``).

Both proxies present a certificate signed by the configured CA; each refuses a peer whose
certificate is not. Both also check, with service_identity, that the peer's certificate names the
peer's outside address as configured (an IP address SAN), so a certificate issued to another
site does not pass: the dialler while handshaking, the accepting side right after.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

from twisted.internet import ssl
from twisted.protocols.tls import TLSMemoryBIOFactory


class TlsError(ValueError):
    """The certificate, key or CA files cannot be used; the message says which and why."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().encode("ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise TlsError(f"cannot read the {what} {path}: {e}") from None


@dataclass(frozen=True)
class TlsConfig:
    """This proxy's certificate and key, and the CA both proxies' certificates come from."""

    certificate: ssl.PrivateCertificate
    authority: ssl.Certificate

    @classmethod
    def from_files(cls, cert: str, key: str, ca: str) -> TlsConfig:
        pem = _read(cert, "certificate") + _read(key, "key")
        ca_pem = _read(ca, "CA certificate")
        try:
            own = ssl.PrivateCertificate.loadPEM(pem)
        except Exception as e:
            raise TlsError(f"{cert} / {key}: not a matching PEM certificate and key ({e})") from None
        try:
            authority = ssl.Certificate.loadPEM(ca_pem)
        except Exception as e:
            raise TlsError(f"{ca}: not a PEM CA certificate ({e})") from None
        return cls(own, authority)

    def server(self, wrapped: Any) -> TLSMemoryBIOFactory:
        """Wrap the outside listener's factory: require a client certificate from our CA."""
        options = self.certificate.options(self.authority)
        return _quiet(TLSMemoryBIOFactory(options, False, wrapped))

    def client(self, peer_host: str, wrapped: Any) -> TLSMemoryBIOFactory:
        """Wrap a dialling factory: the peer must prove it is ``peer_host``, signed by our CA."""
        options = ssl.optionsForClientTLS(
            peer_host, trustRoot=self.authority, clientCertificate=self.certificate
        )
        return _quiet(TLSMemoryBIOFactory(options, True, wrapped))


def _quiet(factory: TLSMemoryBIOFactory) -> TLSMemoryBIOFactory:
    # Wrappers start and stop with every link, like the factories they wrap: not news.
    factory.noisy = False
    return factory


def check_peer(transport: Any, expected: str) -> str | None:
    """None if the TLS peer's certificate names ``expected`` (an IP or a host name), else why not."""
    peer = transport.getPeerCertificate()
    if peer is None:
        return "the peer presented no certificate"
    cert = peer.to_cryptography()
    try:
        try:
            ipaddress.ip_address(expected)
        except ValueError:
            verify_certificate_hostname(cert, expected)
        else:
            verify_certificate_ip_address(cert, expected)
    except VerificationError as e:
        return f"the peer's certificate is not for {expected}: {e}"
    return None
