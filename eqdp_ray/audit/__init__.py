"""Privacy auditing: one real training run with canaries, and an empirical lower bound on epsilon."""

from eqdp_ray.audit.run import AUDIT_FILE, run_audit, write_audit

__all__ = ["AUDIT_FILE", "run_audit", "write_audit"]
