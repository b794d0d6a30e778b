"""The Lean checker: a pool of leanprover-community/repl processes behind a fail-closed integrity policy.

checker.py   LeanChecker, CheckResult: the interface the verify worker calls
policy.py    text policy, imposed statement, position mapping, `#print axioms` answers
pool.py      warm REPL processes: spares, recycling, replacement
process.py   one REPL process: framing over pipes, deadline, output cap, memory watchdog, kill
protocol.py  request encoding and lenient typed reply parsing
feedback.py  the text the model sees in its next round
sandbox_launch.py  network namespace, rlimits, unprivileged user, then exec (stdlib only)
setup.py     `oprover lean setup`: a pinned Lean project with Mathlib and the repl
"""

from services.lean.checker import CheckResult, LeanChecker
from services.lean.protocol import LeanMessage, Pos

__all__ = ["CheckResult", "LeanChecker", "LeanMessage", "Pos"]
