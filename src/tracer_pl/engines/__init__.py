"""The model behind one seam: an :class:`~.base.Engine` builds a :class:`~.base.Policy`.

``hf`` (transformers + peft, the default), ``vllm`` (vLLM rollouts) and ``fake`` (a tiny torch policy for tests).
Engines never import Lightning (a test enforces it).
"""
