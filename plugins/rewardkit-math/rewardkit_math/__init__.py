"""rewardkit-math: rule-based math rewards for rewardkit (see README.md)."""
