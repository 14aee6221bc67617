"""Kiosk firmware: frame source → QR decoder → verifier → light + report."""
