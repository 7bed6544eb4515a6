r"""Reading and grading answers.

Final-answer lines, ``\boxed{}``, letters and numbers. Pure: no Lightning, no transformers (a test enforces it).
"""
