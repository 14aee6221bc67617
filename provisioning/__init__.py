"""Admin tooling: fleet PKI, kiosk enrolment, broker configuration, printed cards."""
