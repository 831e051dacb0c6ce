"""Policy heads: one module per head (diffusion.py, flow.py, ...) behind the interface in base.py.

Heads are looked up by name through `robopolicy.policies.registry` so importing this package stays cheap.
"""

from robopolicy.policies.base import Chain, GenerativePolicy, Policy, PolicySpec

__all__ = ["Chain", "GenerativePolicy", "Policy", "PolicySpec"]
