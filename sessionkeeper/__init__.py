"""Operator-side code of sessionkeeper (administration, daemon); bots import ``store`` only."""
