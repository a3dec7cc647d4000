"""The Fractal webserver: its client and the heartbeat child task."""
