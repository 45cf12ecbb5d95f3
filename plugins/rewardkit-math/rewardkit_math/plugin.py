"""rewardkit hooks of the math plugin. Cheap to import: everything is named by a "module:attr" string."""

from rewardkit import hookimpl


@hookimpl
def register_rewards(register):
    register("math.accuracy", "rewardkit_math.accuracy:MathAccuracy",
             columns="rewardkit_math.accuracy:accuracy_columns",
             description="1.0 if the final answer (boxed, ####, 'the answer is') equals the gold per math-verify, "
                         "checked in worker processes under a hard deadline; None if it cannot be checked")
    register("math.format", "rewardkit_math.shaping:MathFormat", columns=[],
             description="1.0 for <think>...</think><answer>...</answer> (pre-filled <think> tolerated)")
    register("math.length_penalty", "rewardkit_math.shaping:LengthPenalty", columns=[],
             description="DAPO soft over-length penalty: 0 .. -1 over the last cache_length tokens/chars")


@hookimpl
def register_datasets(register):
    register("math.word_problems", "rewardkit_math.data:word_problems", columns=["question", "answer", "solution"],
             description="bundled synthetic one-step add/subtract word problems (answers as '#### N')")
