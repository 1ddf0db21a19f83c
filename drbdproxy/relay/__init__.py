"""The Twisted side of the data path: thin protocols for links and DRBD sockets."""
