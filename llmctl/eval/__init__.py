"""llmctl eval: perplexity, multiple choice, exact match, degeneration, contamination, reward-model
preference accuracy, win rate and stop rate.

`runner.run_eval` loads the model once (`lm.load_lm`) and runs each task of the registry
(`tasks.TASKS`) against the `lm.LM` interface; each task returns rows of (task, metric, value, stderr, n).
"""
