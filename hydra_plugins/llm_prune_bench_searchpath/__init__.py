"""Hydra search-path plugin of llm-prune-bench (discovered by Hydra through the ``hydra_plugins`` namespace)."""
