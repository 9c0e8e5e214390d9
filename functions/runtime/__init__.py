"""Shared runtime for objectflow functions: settings, clients, the CloudEvent adapter."""
