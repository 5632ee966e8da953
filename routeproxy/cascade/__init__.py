"""Cascade mode: the check of the small tier's answer, its YAML rule sets, and the exchange that holds the answer and
escalates a weak one to the large tier."""
