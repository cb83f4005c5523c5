"""agentstate's application: the CLI, the daemon, its control channel and the command registry.

It sits above the library packages and may import `replica`, `transport` and `compat`;
they never import it. Nothing is imported here, so `agentstate` loads only what a command needs.
"""
