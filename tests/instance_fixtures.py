"""The one instance the unit tests describe: what IMDS says about a g4dn host in us-east-1."""

from __future__ import annotations

import dataclasses

from fractal_hostd.hoststate import InstanceMetadata

METADATA = InstanceMetadata(
    ami_id="ami-0123",
    ami_launch_index="0",
    instance_id="i-0abc",
    instance_type="g4dn.xlarge",
    region="us-east-1",
    availability_zone="us-east-1a",
    public_ipv4=None,
)
# The same host with a public address (a spot host seen from outside, the certificate's SAN).
PUBLIC_METADATA = dataclasses.replace(METADATA, public_ipv4="203.0.113.7")
