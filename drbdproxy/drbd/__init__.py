"""The DRBD wire protocol, sans-IO: headers, the packet table, payload structs, a streaming decoder.

Nothing in this package knows about sockets or Twisted; it turns bytes into packets and back.
"""
