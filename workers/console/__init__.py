"""``catfleet console``: the fleet in a browser (overview, workers, dead letters, patterns, audit),
server-rendered with live updates over server-sent events, on Starlette. Every number comes from
the same service functions the CLI uses (``workers.console.service``)."""
