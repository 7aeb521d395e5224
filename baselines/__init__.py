"""The stored baseline tables, shipped as package data: `harness.baselines` reads them."""
