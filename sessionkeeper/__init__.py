"""Operator-side code of sessionkeeper: what runs beside the bots, never inside them."""
