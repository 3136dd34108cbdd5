"""pytest plugin of the conformance suite (placeholder until issue 4 lands)."""
