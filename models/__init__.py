"""Ported inference implementations: shared layers plus one thin file per family."""
