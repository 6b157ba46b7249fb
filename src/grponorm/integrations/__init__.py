"""Adapters that run grponorm's normalizers and diagnostics inside other trainers (TRL, verl)."""
