"""Trainer stages. Each is registered by name through ``register_trainers`` (see rewardkit.builtin)."""
