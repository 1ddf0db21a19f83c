"""A stand-in for the server-side connection lookup that link handshakes call."""

from __future__ import annotations

from drbdproxy.link import LinkRole, RejectReason


class Registry:
    """Known names, one control session per name, every call recorded.

    ``refuse_duplicate_meta``: a second meta link for a name is DUPLICATE_META (like
    the integrator's lookup); otherwise it replaces the first session.
    """

    def __init__(self, *names: str, refuse_duplicate_meta: bool = True) -> None:
        self.names = set(names)
        self.refuse_duplicate_meta = refuse_duplicate_meta
        self.control: dict[str, bytes] = {}
        self.calls: list[tuple[str, LinkRole, bytes]] = []

    def __call__(self, name: str, role: LinkRole, session: bytes) -> RejectReason | None:
        self.calls.append((name, role, session))
        if name not in self.names:
            return RejectReason.UNKNOWN_CONNECTION
        if role is LinkRole.META:
            if self.refuse_duplicate_meta and name in self.control:
                return RejectReason.DUPLICATE_META
            self.control[name] = session
            return None
        return None if self.control.get(name) == session else RejectReason.NO_SUCH_SESSION
