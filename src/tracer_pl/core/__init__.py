"""The method itself.

Problems, the agent protocol, regret matching, controllers, GSPO, roles, seats and the dialogue's round loop.
Pure: nothing here imports Lightning or transformers (a test enforces it).
"""
