"""Event-source adapters deployed alongside the functions: MQTT bridge, MinIO webhook adapter."""
