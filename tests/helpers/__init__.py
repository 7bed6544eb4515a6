"""What several test folders share: scripted agents and controllers, roles with signal, record checks, paths, ``fit``.

Import them by their package path (``from tests.helpers.scripted import ScriptedAgent``); a YAML or command-line
``class_path`` names them the same way (``tests.helpers.roles_for_tests.ByteSumProposer``), which resolves when
the repository root is on ``sys.path`` (pytest's ``pythonpath``; ``PYTHONPATH`` for a child process).
"""
