from twisted.application.service import ServiceMaker

DRBDProxy = ServiceMaker(
    "DRBD Proxy", "drbdproxy.tap", "Buffer, compress and relay DRBD over a WAN.", "drbd-proxy"
)
