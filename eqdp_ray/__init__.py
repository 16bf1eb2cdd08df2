"""eqdp-ray: DP-SGD for E(2)-equivariant CNNs on Ray."""

__version__ = "0.1.0"
