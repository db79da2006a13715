"""lm-eval task YAMLs of eval=quick, their data (data/) and checkers (utils.py); see rlhf/evaluate.py."""
