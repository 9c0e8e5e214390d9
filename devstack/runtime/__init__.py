"""The local runtime: broker, function processes and the local stand-ins for Knative sources."""
