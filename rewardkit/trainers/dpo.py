"""DPO with its held-out preference accuracy measured after training.

TRL's ``DPOTrainer`` logs ``rewards/accuracies`` on the pairs it trains on. What tells whether DPO learned the
preference rather than the pairs is the same statistic on pairs it never saw: the share of held-out pairs whose
implicit reward, beta * (log pi(y|x) - log pi_ref(y|x)), ranks ``chosen`` above ``rejected`` (ties count as
wrong). It is computed by TRL's own evaluation loop on the stage's ``test`` split and lands in the stage's
``summary.json`` entry as ``heldout_preference_accuracy`` (with ``heldout_margin``).
"""

from __future__ import annotations

from trl import DPOTrainer

from rewardkit.trainers.base import HeldOutMetrics


class HeldOutDPOTrainer(HeldOutMetrics, DPOTrainer):
    def heldout_metrics(self) -> dict:
        self.evaluate(self.heldout)
        # TRL adds its DPO statistics to the evaluation's log record (eval_*), not to evaluate()'s result; they
        # are means over evaluation batches (exact when the batch size divides the number of pairs).
        m = next(r for r in reversed(self.state.log_history) if "eval_rewards/accuracies" in r)
        return {"heldout_preference_accuracy": m["eval_rewards/accuracies"], "heldout_margin": m["eval_rewards/margins"],
                "heldout_pairs": len(self.heldout)}
