"""The operator's side of the daemon: logs, Prometheus metrics, the SSH manhole, and the
endpoint strings they listen on."""
