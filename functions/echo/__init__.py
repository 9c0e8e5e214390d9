"""echo: the runtime's reference function (records a message once, replies with it)."""
