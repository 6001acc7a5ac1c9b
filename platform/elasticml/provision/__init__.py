"""Provisioning: one definition of node types and markets, rendered for local, AWS and KubeRay."""
