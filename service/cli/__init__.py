"""The `lelastic` command: its subcommands, the process supervisor of `lelastic up`, the HTTP client
and the demo. Starts workers as processes (`python -m workers.main`), never by importing them."""
