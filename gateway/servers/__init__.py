"""The trio drivers: the gateway process, its listeners and their sessions. I/O only; the
protocol machines decide, the services act."""
