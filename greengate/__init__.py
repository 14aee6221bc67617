"""GreenGate contracts: what the kiosk, the fleet and provisioning all speak.

This package must never import `device`, `fleet` or `provisioning`: they
depend on it, not the other way round.
"""
