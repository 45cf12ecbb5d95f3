"""A third-party rewardkit environment: a key-value store the model reads through one tool."""
