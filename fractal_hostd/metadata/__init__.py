"""The instance metadata: its IMDSv2 client and the spot poller child task."""
