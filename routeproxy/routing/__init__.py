"""Routing: the YAML rule sets, the prompt's classification (pure) and the routing policy with its stable A/B hash
(pure)."""
