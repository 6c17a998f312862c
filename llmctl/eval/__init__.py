"""llmctl eval: perplexity, multiple choice, exact match, degeneration, contamination, reward-model
preference accuracy and win rate (issue 7).

`runner.run_eval` loads the model once (`lm.load_lm`) and runs each task module against the
`lm.LM` scoring interface; each task returns rows of (task, metric, value, stderr, n).
"""
